"""Soft stops that hold no worker: press the guest's power button, note the deadline, and let
the work queue bring the Server back when the guest went off (libvirt's lifecycle event) or
when the deadline passed — instead of sleeping in one of the agent's few workers for up to
``shutdownTimeoutSeconds`` (which a tenant may set to an hour: four such Servers would stall
every other Server of the host).

Nova's ``_clean_shutdown`` does the same steps in a loop: ACPI shutdown, re-sent every
``retry_interval`` (10 s, a guest may miss the first), forced off after ``shutdown_timeout``.
Here each step is one call of :meth:`SoftStops.step` from a level-triggered reconcile, which
returns what to do and how long until the next look. The timeout a Server asks for is capped
by the admin's ``max_timeout`` (the tenant's field is an upper bound of their own patience,
not of the host's).

The waits live in memory: an agent that restarts mid-stop presses the button again and waits
another full timeout, which errs on the side of the guest's clean shutdown.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Protocol

DEFAULT_MAX_TIMEOUT = 600.0
"""The default admin maximum of a soft stop's wait (the Server's field allows up to 3600 s)."""

REPRESS_SECONDS = 10.0
"""How often the power button is pressed again while waiting (Nova's ``retry_interval``)."""


class PowerButton(Protocol):
    def request_shutdown(self, uuid: str) -> bool:
        """Press the ACPI power button without waiting; True when the guest is off already."""


@dataclasses.dataclass(frozen=True)
class Waiting:
    """The guest was asked and has time left: look again after ``recheck`` seconds."""

    remaining: float
    recheck: float
    started: bool
    """The button was pressed for the first time just now (say so in an Event)."""
    timeout: float
    """The timeout in force (the Server's, capped by the admin's maximum)."""
    capped: bool
    """The Server asked for more than the admin allows."""


@dataclasses.dataclass(frozen=True)
class Off:
    """The guest went off by itself after ``waited`` seconds."""

    waited: float


@dataclasses.dataclass(frozen=True)
class Expired:
    """The guest did not go off within ``timeout``: force it off now."""

    waited: float
    timeout: float


Outcome = Waiting | Off | Expired


@dataclasses.dataclass
class _Pending:
    started: float
    deadline: float
    pressed: float
    timeout: float


class SoftStops:
    """The soft stops in progress on one host, by domain UUID (thread-safe)."""

    def __init__(
        self,
        button: PowerButton,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        repress_seconds: float = REPRESS_SECONDS,
    ) -> None:
        self._button = button
        self.max_timeout = max(0.0, max_timeout)
        self._clock = clock
        self._repress = repress_seconds
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def timeout_for(self, asked: float) -> float:
        """The wait in force for a Server that asks for ``asked`` seconds."""
        return min(max(0.0, asked), self.max_timeout)

    def step(self, uuid: str, running: bool, asked_timeout: float) -> Outcome:
        """One look at a guest that should stop cleanly. ``running`` is its state now.

        Off: it stopped (by itself, since the first press). Expired: force it off. Waiting:
        requeue the Server after ``recheck`` seconds (a lifecycle event may come sooner)."""
        now = self._clock()
        with self._lock:
            pending = self._pending.get(uuid)
        if not running:
            with self._lock:
                self._pending.pop(uuid, None)
            return Off(now - pending.started if pending is not None else 0.0)
        timeout = self.timeout_for(asked_timeout)
        capped = asked_timeout > timeout
        if pending is None:
            if timeout <= 0:
                return Expired(0.0, 0.0)
            if self._button.request_shutdown(uuid):
                return Off(0.0)
            pending = _Pending(now, now + timeout, now, timeout)
            with self._lock:
                self._pending[uuid] = pending
            return Waiting(timeout, min(timeout, self._repress), True, timeout, capped)
        if now >= pending.deadline:
            with self._lock:
                self._pending.pop(uuid, None)
            return Expired(now - pending.started, pending.timeout)
        if now - pending.pressed >= self._repress:
            pending.pressed = now
            if self._button.request_shutdown(uuid):
                with self._lock:
                    self._pending.pop(uuid, None)
                return Off(now - pending.started)
        remaining = pending.deadline - now
        recheck = min(remaining, max(0.05, pending.pressed + self._repress - now))
        return Waiting(remaining, recheck, False, pending.timeout, capped)

    def cancel(self, uuid: str) -> bool:
        """Forget a soft stop (the Server wants to run again, or is gone); True if one was
        in progress."""
        with self._lock:
            return self._pending.pop(uuid, None) is not None

    def in_progress(self, uuid: str) -> bool:
        with self._lock:
            return uuid in self._pending
