"""The agent's work queue: one worker per key at a time, de-duplication, delays."""

from __future__ import annotations

import threading
import time

from kubenova_agent.workqueue import WorkQueue


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
