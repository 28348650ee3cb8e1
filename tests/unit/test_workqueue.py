"""The agent's work queue: one worker per key at a time, de-duplication, delays."""

from __future__ import annotations

import threading
import time

from kubenova_agent.workqueue import WorkQueue, backoff_delay


def test_a_key_queued_twice_is_handled_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert q.get() == "a"
    assert q.get() == "b"
    assert len(q) == 0


def test_a_key_re_added_while_processing_waits_for_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get() == "a"
    q.add("a")  # changed while being worked on
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.1)
    assert got == []  # not handed to a second worker while the first still holds it
    q.done("a")
    t.join(2)
    assert got == ["a"]


def test_delayed_add_and_backoff() -> None:
    q: WorkQueue[str] = WorkQueue()
    start = time.monotonic()
    q.add("late", delay=0.2)
    assert q.get() == "late"
    assert time.monotonic() - start >= 0.19
    q.done("late")
    assert q.backoff("late", base=0.05) == 0.05
    assert q.get() == "late"
    q.done("late")
    assert q.backoff("late", base=0.05) == 0.1
    q.forget("late")
    assert q.backoff("late", base=0.05) == 0.05
    q.close()
    assert q.get() is None


def test_backoff_delay_never_overflows() -> None:
    assert backoff_delay(0, 0.5, 60) == 0.5
    assert backoff_delay(3, 0.5, 60) == 4.0
    for n in (1023, 1024, 1025, 2000, 10**6, 10**100):
        assert backoff_delay(n, 0.5, 60) == 60.0  # 2**1024 is past float range
    assert backoff_delay(5, float("inf"), float("inf")) == 24 * 3600.0
    assert backoff_delay(5, float("nan"), 60) == 0.0


def test_a_key_failing_2000_times_leaves_the_worker_alive() -> None:
    """The old backoff computed float(2**n) and raised OverflowError at n=1024 inside the
    worker's except clause, killing the worker thread."""
    q: WorkQueue[str] = WorkQueue(backoff_base=0.0001, backoff_cap=0.0001)
    calls = {"bad": 0, "good": 0}
    errors: list[float] = []

    def handle(key: str) -> float | None:
        calls[key] += 1
        if key == "bad" and calls["bad"] <= 2000:
            raise RuntimeError("libvirt said no")
        return None

    def on_error(key: str, exc: Exception, delay: float) -> None:
        errors.append(delay)
        if len(errors) == 1500:
            raise ValueError("even the error hook fails once")

    worker = threading.Thread(
        target=lambda: [None for _ in iter(lambda: q.process_next(handle, on_error), False)]
    )
    worker.start()
    q.add("bad")
    deadline = time.monotonic() + 60
    while calls["bad"] <= 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls["bad"] == 2001, calls  # 2000 failures, then the success
    assert worker.is_alive()
    assert q.failures("bad") == 0  # forgotten after the success
    assert max(errors) <= 0.0001
    q.add("good")
    while calls["good"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls["good"] == 1  # the same worker still takes new keys
    q.close()
    worker.join(5)
    assert not worker.is_alive()


def test_the_old_backoff_overflowed() -> None:
    """What the fix is about: the counter the queue keeps does reach the overflow point."""
    q: WorkQueue[str] = WorkQueue(backoff_base=0.0, backoff_cap=0.0)
    for _ in range(1100):
        q.backoff("k")
    assert q.failures("k") == 1100
    try:
        float(2**1100)
    except OverflowError:
        pass
    else:  # pragma: no cover - Python's floats are IEEE doubles
        raise AssertionError("float(2**1100) should overflow")


def test_absurd_delays_do_not_break_get() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("never", delay=float("inf"))  # clamped to a day, not an OverflowError in wait()
    q.add("nan", delay=float("nan"))  # counts as now
    assert q.get() == "nan"
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    time.sleep(0.1)
    q.close()
    t.join(2)
    assert got == [None]
