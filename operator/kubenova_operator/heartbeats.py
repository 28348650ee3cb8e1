"""The hosts' heartbeat Leases, as the controller sees them (Kubernetes' node lifecycle
controller reads the kubelets' Leases the same way).

Each agent renews ``hypervisor-<host>`` (labelled ``compute.kubenova.io/hypervisor=<host>``) in
the heartbeat namespace every beat, and writes its Hypervisor status only when a figure in it
changes. A host's heartbeat is the later of its Lease's ``renewTime`` and its status's
``lastHeartbeatTime`` (an agent that cannot renew its Lease heartbeats in its status).

A thread lists the Leases, then watches them (:mod:`kubenova_api.listwatch`: from the API
server's watch cache first, resumed where it stopped, listed again on 410 Gone). Renewals do
not wake the controller's pass (they change nothing it decides on) except for a host whose last
heartbeat had gone stale: that host is coming back."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client

from kubenova_api import common, constants, kube, listwatch

log = logging.getLogger(__name__)


class Heartbeats(listwatch.ListWatch):
    """host -> the ``renewTime`` of its heartbeat Lease, kept current by :meth:`run`."""

    UNSYNCED = "no pass runs until they are read"

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        grace_seconds: float,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(f"heartbeat Leases in {namespace}")
        self._api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self._grace = dt.timedelta(seconds=grace_seconds)
        self._on_back = on_back
        self._renewed: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def renewed(self) -> Mapping[str, dt.datetime]:
        """A copy: host -> when its Lease was last renewed."""
        with self._lock:
            return dict(self._renewed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="heartbeat-leases", daemon=True)
        self._thread.start()

    @staticmethod
    def _of(lease: Mapping[str, Any]) -> tuple[str, dt.datetime | None] | None:
        meta = lease.get("metadata") or {}
        host = (meta.get("labels") or {}).get(constants.HEARTBEAT_LEASE_LABEL)
        if not host or meta.get("name") != constants.heartbeat_lease(host):
            return None  # not a heartbeat Lease (or one naming another host: ignored)
        return host, common.parse_time((lease.get("spec") or {}).get("renewTime"))

    # ------------------------------------------------------------------ ListWatch
    def list_objects(self, **page: Any) -> dict[str, Any]:
        resp: Any = self._api.list_namespaced_lease(
            self.namespace,
            label_selector=constants.HEARTBEAT_LEASE_LABEL,
            **page,
            _request_timeout=kube.TIMEOUT,
            _preload_content=False,  # the JSON, not models
        )
        listing: dict[str, Any] = json.loads(resp.data)
        return listing

    def watch_call(self) -> listwatch.WatchCall:
        return (
            self._api.list_namespaced_lease,
            (self.namespace,),
            {"label_selector": constants.HEARTBEAT_LEASE_LABEL},
        )

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        fresh: dict[str, dt.datetime] = {}
        for lease in items:
            seen = self._of(lease)
            if seen is not None and seen[1] is not None:
                fresh[seen[0]] = seen[1]
        with self._lock:
            self._renewed = fresh
        if not self.synced.is_set():
            log.info("%d heartbeat Leases in %s", len(fresh), self.namespace)
        else:
            self._on_back()  # a relist may have brought hosts back

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        seen = self._of(obj)
        if seen is None:
            return
        host, renewed = seen
        if kind == "DELETED":
            with self._lock:
                self._renewed.pop(host, None)
            return
        if renewed is None:
            return
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            before = self._renewed.get(host)
            self._renewed[host] = renewed
        fresh = now - renewed <= self._grace
        if self.synced.is_set() and fresh and (before is None or now - before > self._grace):
            self._on_back()  # a host that was down (or not there) is heartbeating
