"""A work queue with Kubernetes controller semantics: a key is queued at most once, handled by
one worker at a time, and may be re-added with a delay (back-off or a scheduled re-check).

A queue must never wedge the agent: the back-off is capped without ever computing a power of two
that overflows a float (client-go's ``ItemExponentialFailureRateLimiter`` guards the same way),
delays are clamped to a sane range (an infinite or NaN delay would make ``Condition.wait``
raise in every worker), and :meth:`WorkQueue.process_next` is a worker loop step that survives
whatever the handler raises.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

MAX_DELAY = 24 * 3600.0
"""The longest a key is ever put aside for; longer (or infinite) delays are clamped to it."""

_MAX_EXPONENT = 64
"""Doublings beyond this cannot matter: 2**64 times any sane base is past any sane cap."""


def backoff_delay(failures: int, base: float = 0.5, cap: float = 60.0) -> float:
    """The delay after ``failures`` earlier failures: ``base * 2**failures``, at most ``cap``.

    Safe for any count: the exponent is bounded before the power is taken, so a key that failed
    a million times gets ``cap``, not an ``OverflowError``."""
    cap = _clamp(cap)
    base = _clamp(base)
    exponent = min(max(failures, 0), _MAX_EXPONENT)
    return min(cap, base * math.ldexp(1.0, exponent))


def _clamp(delay: float) -> float:
    """``delay`` within [0, MAX_DELAY]; NaN counts as 0."""
    if math.isnan(delay) or delay <= 0:
        return 0.0
    return min(delay, MAX_DELAY)


Handler = Callable[[K], "float | None"]
"""Works on one key; returns seconds until the key should be looked at again, or None."""

ErrorHook = Callable[[K, Exception, float], None]
"""Told of a handler's failure: the key, the exception, and the back-off delay chosen."""


class WorkQueue(Generic[K]):
    def __init__(self, backoff_base: float = 0.5, backoff_cap: float = 60.0) -> None:
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._cond = threading.Condition()
        self._queue: collections.deque[K] = collections.deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._seq = 0
        self._closed = False
        self._failures: dict[K, int] = {}

    def add(self, key: K, delay: float = 0.0) -> None:
        delay = _clamp(delay)
        with self._cond:
            if self._closed:
                return
            if delay > 0:
                self._seq += 1
                heapq.heappush(self._delayed, (time.monotonic() + delay, self._seq, key))
                self._cond.notify()
                return
            if key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def get(self) -> K | None:
        """The next key to work on, or None once the queue is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                timeout = None
                if self._delayed:
                    timeout = min(MAX_DELAY, max(0.0, self._delayed[0][0] - time.monotonic()))
                self._cond.wait(timeout)

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key not in self._dirty:
                self._dirty.add(key)
                if key not in self._processing:
                    self._queue.append(key)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def backoff(self, key: K, base: float | None = None, cap: float | None = None) -> float:
        """Re-add ``key`` after an exponentially growing delay (capped); returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = backoff_delay(
            n,
            self.backoff_base if base is None else base,
            self.backoff_cap if cap is None else cap,
        )
        self.add(key, delay)
        return delay

    def failures(self, key: K) -> int:
        """How many times in a row ``key`` failed (0 after :meth:`forget`)."""
        with self._cond:
            return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def process_next(self, handle: Handler[K], on_error: ErrorHook[K] | None = None) -> bool:
        """One step of a worker loop: take a key, handle it, and re-queue it as the outcome
        says — after the returned delay, or with back-off when ``handle`` raised. Returns False
        once the queue is closed. Never raises what ``handle`` or ``on_error`` raise, so a key
        that fails forever costs retries, never a worker::

            while queue.process_next(reconcile_key, log_failure):
                pass
        """
        key = self.get()
        if key is None:
            return False
        try:
            again = handle(key)
            self.forget(key)
            if again is not None:
                self.add(key, again)
        except Exception as exc:
            delay = self.backoff(key)
            if on_error is not None:
                try:
                    on_error(key, exc, delay)
                except Exception:
                    log.exception("reporting the failure of %r failed", key)
        finally:
            self.done(key)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._delayed)
