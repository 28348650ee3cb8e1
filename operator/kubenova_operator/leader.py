"""Leader election through a ``coordination.k8s.io`` Lease, as client-go's ``leaderelection``
does it: of the controller's replicas only the holder of the Lease runs kopf and the binder;
the others wait, ready to take over.

* A candidate takes the Lease when it is free (released, or never made) or when its record has
  not changed for ``lease_seconds`` *as measured by the candidate's own clock* since it first
  saw that record (no trust in clocks across machines). Every write is conditional on the
  Lease's resourceVersion, so two candidates never both win.
* The leader renews every ``retry_seconds``. If it has not renewed successfully for
  ``renew_deadline_seconds`` (counted from when the last successful renewal was *sent*), or it
  sees another holder, it has lost: it must stop acting at once, so ``on_lost`` ends the
  process (the pod restarts as a standby). A standby waits at least ``lease_seconds`` after the
  last renewal it saw, longer than the leader's deadline: by then the old leader has stopped.
* A leader that stops normally (SIGTERM) releases the Lease, and a standby takes over within
  ``retry_seconds``; a leader that dies is replaced within ``lease_seconds + retry_seconds``.

Binding writes are conditional on the Server's resourceVersion besides, so even a leader
that acts a moment too long cannot bind a Server twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubenova_operator.settings import ControllerSettings

log = logging.getLogger("kubenova_operator.leader")


@dataclasses.dataclass(frozen=True)
class LeaderSettings:
    enabled: bool = False
    """Run only while holding the Lease (the chart's two replicas); off for one process."""
    namespace: str = ""
    """Where the Lease lives (the pod's namespace by default)."""
    lease_name: str = "kubenova-controller"
    identity: str = ""
    """This candidate's name in the Lease (the pod's name plus a random suffix)."""
    lease_seconds: float = 8.0
    """How long a standby waits after the last renewal it saw before it takes the Lease."""
    renew_deadline_seconds: float = 5.0
    """How long the leader may fail to renew before it gives up (shorter than the above)."""
    retry_seconds: float = 1.0
    """How often the leader renews and a standby looks."""


def from_settings(cfg: ControllerSettings) -> LeaderSettings:
    """The Lease settings of the controller's ``--leader-elect*`` flags; the identity is the
    pod's name (``$POD_NAME``, else the host name) plus a random suffix."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    lead = LeaderSettings(
        enabled=cfg.leader_elect,
        namespace=cfg.leader_elect_namespace,
        lease_name=cfg.leader_elect_lease_name,
        identity=f"{base}_{uuid.uuid4().hex[:8]}",
        lease_seconds=cfg.leader_elect_lease_seconds,
        renew_deadline_seconds=cfg.leader_elect_renew_deadline_seconds,
        retry_seconds=cfg.leader_elect_retry_seconds,
    )
    if lead.enabled and not lead.namespace:
        raise SystemExit("--leader-elect needs --leader-elect-namespace (or $POD_NAMESPACE)")
    if lead.enabled and not lead.retry_seconds < lead.renew_deadline_seconds < lead.lease_seconds:
        raise SystemExit("leader election needs retry < renew deadline < lease duration")
    return lead


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Elector:
    """One candidate for the Lease. ``try_acquire_or_renew`` is one step; ``acquire`` waits
    for leadership; ``keep`` renews in a thread of its own until ``release``."""

    def __init__(
        self,
        api: client.CoordinationV1Api,
        cfg: LeaderSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.cfg = cfg
        self.clock = clock
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self.holder = ""
        """The holder seen last (this candidate's identity while it leads)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self.holder == self.cfg.identity

    def _timeout(self) -> float:
        return max(0.5, min(2 * self.cfg.retry_seconds, self.cfg.renew_deadline_seconds / 2))

    def try_acquire_or_renew(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; True if we hold it now."""
        cfg, now = self.cfg, _now()
        spec = client.V1LeaseSpec(
            holder_identity=cfg.identity,
            lease_duration_seconds=max(1, round(cfg.lease_seconds)),
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        )
        try:
            lease = self.api.read_namespaced_lease(
                cfg.lease_name, cfg.namespace, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.lease_name, namespace=cfg.namespace),
                spec=spec,
            )
            try:
                self.api.create_namespaced_lease(
                    cfg.namespace, body, _request_timeout=self._timeout()
                )
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate made it first
                    return False
                raise
            self._took(spec)
            return True
        old = lease.spec or client.V1LeaseSpec()
        holder = old.holder_identity or ""
        record = (holder, old.renew_time, old.lease_duration_seconds, old.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = holder
        duration = old.lease_duration_seconds or cfg.lease_seconds
        if holder and holder != cfg.identity and self.clock() < self._observed_at + duration:
            return False  # someone else holds it and has renewed within the lease
        if holder == cfg.identity:
            spec.acquire_time = old.acquire_time or now
            spec.lease_transitions = old.lease_transitions or 0
        else:
            spec.lease_transitions = (old.lease_transitions or 0) + 1
        lease.spec = spec  # the read's resourceVersion makes the write conditional
        try:
            self.api.replace_namespaced_lease(
                cfg.lease_name, cfg.namespace, lease, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status == 409:  # changed since we read it: someone else wrote first
                return False
            raise
        if holder != cfg.identity:
            log.info("took the lease %s/%s from %r", cfg.namespace, cfg.lease_name, holder)
        self._took(spec)
        return True

    def _took(self, spec: client.V1LeaseSpec) -> None:
        self.holder = self.cfg.identity
        self._observed = (
            spec.holder_identity,
            spec.renew_time,
            spec.lease_duration_seconds,
            spec.lease_transitions,
        )
        self._observed_at = self.clock()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this candidate leads (True) or ``stop`` is set (False)."""
        announced = ""
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("leading as %s (lease %s)", self.cfg.identity, self.cfg.lease_name)
                    return True
            except Exception as exc:
                log.warning("cannot read or take the lease: %s", exc)
            if self.holder and self.holder != announced:
                log.info("standing by: %s leads", self.holder)
                announced = self.holder
            stop.wait(self.cfg.retry_seconds)
        return False

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Renew in a thread of its own; call ``on_lost`` once leadership is lost."""
        self._thread = threading.Thread(
            target=self._renew, args=(on_lost,), name="leader-renew", daemon=True
        )
        self._thread.start()

    def _renew(self, on_lost: Callable[[str], None]) -> None:
        cfg = self.cfg
        last_sent_ok = self.clock()
        while not self._stop.wait(cfg.retry_seconds):
            sent = self.clock()
            try:
                if self.try_acquire_or_renew():
                    last_sent_ok = sent
                    continue
                if self.holder and not self.is_leader:
                    on_lost(f"the lease is held by {self.holder}")
                    return
            except Exception as exc:
                log.warning("renewing the lease failed: %s", exc)
            if self._stop.is_set():
                return
            if self.clock() - last_sent_ok > cfg.renew_deadline_seconds:
                on_lost(f"not renewed for {cfg.renew_deadline_seconds:.0f}s")
                return

    def release(self) -> None:
        """Stop renewing and hand the Lease back (so that a standby need not wait it out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout() + 1)
        if not self.is_leader:
            return
        cfg = self.cfg
        try:
            lease = self.api.read_namespaced_lease(
                cfg.lease_name, cfg.namespace, _request_timeout=self._timeout()
            )
            if lease.spec is None or lease.spec.holder_identity != cfg.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            self.api.replace_namespaced_lease(
                cfg.lease_name, cfg.namespace, lease, _request_timeout=self._timeout()
            )
            self.holder = ""
            log.info("released the lease %s/%s", cfg.namespace, cfg.lease_name)
        except Exception as exc:
            log.warning("could not release the lease (a standby waits it out): %s", exc)


def exit_now(reason: str) -> None:
    """What a controller does when it loses the Lease: stop acting at once, by ending the
    process (pending writes die with it); the pod restarts as a standby."""
    log.critical("lost leadership (%s): exiting so that only the new leader acts", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)
