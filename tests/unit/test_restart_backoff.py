"""restartPolicy Always backs off like CrashLoopBackOff: at once, then 10 s doubling to 5 min,
reset after 10 minutes of running."""

from __future__ import annotations

from kubenova_agent.restartbackoff import Restart, RestartBackoff, Wait

UID = "a1b2"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_loop(rb: RestartBackoff, clock: Clock, stops: int, runs_for: float) -> list[float]:
    """A guest that powers itself off ``runs_for`` seconds after every start: the delays
    between its stop and its next start."""
    delays = []
    for _ in range(stops):
        stopped = clock.now
        while True:
            got = rb.decide(UID)
            if isinstance(got, Restart):
                break
            assert got.reason == "RestartBackOff" and "back-off" in got.message
            clock.now += got.remaining  # the work queue brings the Server back then
        delays.append(clock.now - stopped)
        clock.now += runs_for
    return delays


def test_a_guest_that_powers_itself_off_in_a_loop_backs_off() -> None:
    clock = Clock()
    rb = RestartBackoff(clock=clock)
    assert run_loop(rb, clock, 9, runs_for=1) == [0, 10, 20, 40, 80, 160, 300, 300, 300]


def test_the_count_resets_after_ten_minutes_of_running() -> None:
    clock = Clock()
    rb = RestartBackoff(clock=clock)
    assert run_loop(rb, clock, 3, runs_for=1) == [0, 10, 20]
    clock.now += 700
    assert run_loop(rb, clock, 2, runs_for=1) == [0, 10]


def test_a_wait_says_how_long_and_why() -> None:
    clock = Clock()
    rb = RestartBackoff(clock=clock)
    assert rb.decide(UID) == Restart(1)
    clock.now += 1
    first = rb.decide(UID)
    assert first == Wait(10, 10, 1)
    clock.now += 4
    assert rb.decide(UID) == Wait(6, 10, 1)  # the same wait, not a new one
    assert "stopped by itself 1 times in a row; back-off 10s" in first.message
    rb.forget(UID)
    assert rb.decide(UID) == Restart(1)
