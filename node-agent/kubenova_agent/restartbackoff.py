"""``restartPolicy: Always`` without a restart storm: a guest that keeps stopping by itself is
started again after a growing delay, as the kubelet does for a container in CrashLoopBackOff —
at once the first time, then after 10 s, 20 s, 40 s, … at most 5 minutes, and from the start
again once the guest has run for 10 minutes.

The agent asks :meth:`RestartBackoff.decide` each time it finds such a guest stopped; the answer
is :class:`Restart` (start it now) or :class:`Wait` (requeue after ``remaining`` seconds, and
say so in the Server's status: ``reason`` and ``message`` are written for that). The counts live
in memory; an agent that restarts forgets them, which costs at most one early restart.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from kubenova_agent import workqueue

REASON = "RestartBackOff"


@dataclasses.dataclass(frozen=True)
class Restart:
    attempt: int
    """How many times in a row the guest was restarted, this one included."""


@dataclasses.dataclass(frozen=True)
class Wait:
    remaining: float
    delay: float
    attempt: int
    """How many times in a row the guest was restarted so far."""

    @property
    def reason(self) -> str:
        return REASON

    @property
    def message(self) -> str:
        return (
            f"the guest stopped by itself {self.attempt} times in a row; back-off "
            f"{self.delay:.0f}s before starting it again"
        )


@dataclasses.dataclass
class _State:
    restarts: int = 0
    started: float | None = None
    due: float | None = None
    delay: float = 0.0


class RestartBackoff:
    """Restart decisions per domain UUID (thread-safe)."""

    def __init__(
        self,
        initial: float = 10.0,
        cap: float = 300.0,
        reset_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def decide(self, uuid: str) -> Restart | Wait:
        """The guest ``uuid`` was found stopped by itself and its policy says restart."""
        now = self._clock()
        with self._lock:
            st = self._states.setdefault(uuid, _State())
            if st.due is None:
                if st.started is not None and now - st.started >= self.reset_after:
                    st.restarts = 0  # it ran long enough: a fresh start
                st.delay = (
                    0.0
                    if st.restarts == 0
                    else workqueue.backoff_delay(st.restarts - 1, self.initial, self.cap)
                )
                st.due = now + st.delay
            if now < st.due:
                return Wait(st.due - now, st.delay, st.restarts)
            st.restarts += 1
            st.started = now
            st.due = None
            return Restart(st.restarts)

    def forget(self, uuid: str) -> None:
        """The Server is gone, or its spec changed (a person started or stopped it)."""
        with self._lock:
            self._states.pop(uuid, None)
