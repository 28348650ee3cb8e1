"""The hosts' heartbeat Leases, as the controller sees them (Kubernetes' node lifecycle
controller reads the kubelets' Leases the same way).

Each agent renews ``hypervisor-<host>`` (labelled ``compute.kubenova.io/hypervisor=<host>``) in
the heartbeat namespace every beat, and writes its Hypervisor status only when a figure in it
changes. A host's heartbeat is the later of its Lease's ``renewTime`` and its status's
``lastHeartbeatTime`` (an agent that cannot renew its Lease heartbeats in its status).

A thread lists the Leases, then watches them from the list's resourceVersion; a watch that ends
is resumed where it stopped, a 410 Gone (or a failing watch) lists again. Renewals do not wake
the controller's pass (they change nothing it decides on) except for a host whose last
heartbeat had gone stale: that host is coming back."""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants, kube

log = logging.getLogger(__name__)

WATCH_SECONDS = 240
RELIST_AFTER_FAILED_WATCHES = 5


class Heartbeats:
    """host -> the ``renewTime`` of its heartbeat Lease, kept current by :meth:`run`."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        grace_seconds: float,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self._grace = dt.timedelta(seconds=grace_seconds)
        self._on_back = on_back
        self._renewed: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        """Set once the first LIST is in: before it, every host would look down."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renewed(self) -> Mapping[str, dt.datetime]:
        """A copy: host -> when its Lease was last renewed."""
        with self._lock:
            return dict(self._renewed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="heartbeat-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _of(lease: client.V1Lease) -> tuple[str, dt.datetime | None] | None:
        if lease.metadata is None:
            return None
        host = (lease.metadata.labels or {}).get(constants.HEARTBEAT_LEASE_LABEL)
        if not host or lease.metadata.name != constants.heartbeat_lease(host):
            return None  # not a heartbeat Lease (or one naming another host: ignored)
        renewed = lease.spec.renew_time if lease.spec else None
        return host, renewed

    def _record(self, lease: client.V1Lease, now: dt.datetime) -> None:
        seen = self._of(lease)
        if seen is None:
            return
        host, renewed = seen
        if renewed is None:
            return
        with self._lock:
            before = self._renewed.get(host)
            self._renewed[host] = renewed
        fresh = now - renewed <= self._grace
        if self.synced.is_set() and fresh and (before is None or now - before > self._grace):
            self._on_back()  # a host that was down (or not there) is heartbeating

    def _forget(self, lease: client.V1Lease) -> None:
        seen = self._of(lease)
        if seen is not None:
            with self._lock:
                self._renewed.pop(seen[0], None)

    def _list(self) -> str:
        out = self._api.list_namespaced_lease(
            self.namespace,
            label_selector=constants.HEARTBEAT_LEASE_LABEL,
            _request_timeout=kube.TIMEOUT,
        )
        fresh: dict[str, dt.datetime] = {}
        for lease in out.items:
            seen = self._of(lease)
            if seen is not None and seen[1] is not None:
                fresh[seen[0]] = seen[1]
        with self._lock:
            self._renewed = fresh
        first = not self.synced.is_set()
        self.synced.set()
        if first:
            log.info("%d heartbeat Leases in %s", len(fresh), self.namespace)
        else:
            self._on_back()  # a relist may have brought hosts back
        return str(out.metadata.resource_version if out.metadata else "")

    def run(self) -> None:
        version: str | None = None
        failures = rejected = 0
        delay = 0.5
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                failures, rejected, delay = 0, 0, 0.5
                continue
            except ApiException as exc:
                if exc.status == 410:  # too old to resume from: list again at once
                    version = None
                    continue
                failures += 1
                self._failed(exc, delay, failures)
                # Refused for load (429) or failing (5xx): resume the watch, never list again
                # for it; a watch the API server rejects as such (another 4xx) lists again.
                if not kube.is_overloaded(exc):
                    rejected += 1
            except Exception as exc:  # connection refused, timeouts
                failures += 1
                self._failed(exc, delay, failures)
            if rejected >= RELIST_AFTER_FAILED_WATCHES:
                version, rejected = None, 0
            self._stop.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 30.0)

    def _failed(self, exc: Exception, delay: float, failures: int) -> None:
        what = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
        level = logging.WARNING if failures < 3 and self.synced.is_set() else logging.ERROR
        log.log(
            level,
            "cannot %s the heartbeat Leases in %s (%s); again in %.1fs%s",
            "watch" if self.synced.is_set() else "list",
            self.namespace,
            what,
            delay,
            "" if self.synced.is_set() else ": no pass runs until they are read",
        )

    def _watch(self, version: str) -> str:
        """Follow the Leases from ``version``; returns the last version seen when the watch
        ends (the API server ends it after ``WATCH_SECONDS``)."""
        w = watch.Watch()
        stream: Any = w.stream(
            self._api.list_namespaced_lease,
            self.namespace,
            label_selector=constants.HEARTBEAT_LEASE_LABEL,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_SECONDS + 30,
        )
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                kind, obj = event["type"], event["object"]
                raw = event.get("raw_object") or {}
                if kind == "ERROR":
                    raise ApiException(status=raw.get("code", 500), reason=raw.get("message"))
                # A BOOKMARK's object is left as the raw dict by the client: read the version
                # from the raw event, whatever the type.
                rv = (raw.get("metadata") or {}).get("resourceVersion")
                if rv:
                    version = str(rv)
                if kind == "BOOKMARK" or not isinstance(obj, client.V1Lease):
                    continue
                if kind in ("ADDED", "MODIFIED"):
                    self._record(obj, dt.datetime.now(dt.UTC))
                elif kind == "DELETED":
                    self._forget(obj)
        finally:
            w.stop()
        return version
