"""Every Server, as the controller's passes read it, kept by a list-then-watch thread of its own
(:mod:`kubenova_api.listwatch`, the loop the agents' informers and the heartbeat Leases use),
not by kopf.

Servers are the one kind with many objects and many events (three per Server at the least:
created, bound, ACTIVE). Through kopf each event cost about 2.5 ms of its event loop (its
watch stream, its per-object queue and the invocation of every handler), the largest part of
the controller's CPU at a thousand Servers. Here an event is parsed once into the
:class:`~kubenova_api.resources.Server` model; the thread keeps its compact
:class:`~kubenova_operator.cluster.ServerSummary` and, while it waits for a host, the model
itself, marks it changed in the :class:`~kubenova_operator.cluster.Cluster` and wakes the
binder. kopf keeps the small kinds.

Until the first LIST is in, :meth:`ServerWatch.fold` answers None and no pass runs: a pass that
saw no Servers would fence, schedule and count quota as if no claim existed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubenova_api import constants, kube, listwatch
from kubenova_api.resources import Server
from kubenova_operator import cluster

log = logging.getLogger(__name__)


def _waiting(server: Server) -> bool:
    """Whether a pass has to find ``server`` a host."""
    return not server.status.nodeName and not server.metadata.deleting


class ServerWatch(listwatch.ListWatch):
    """uid -> summary of every Server, and the Servers waiting for a host, kept current by
    :meth:`run` (on a thread of its own after :meth:`start`)."""

    UNSYNCED = "no pass runs until they are read"
    FIRST_LIST = ""
    """The newest, in pages: a controller that starts (or takes over) beside 10,000 Servers
    holds one page of their JSON at a time, not all of it (its peak was 82 MiB higher with
    10,000 Servers of 1.4 KB each, and grows with their size)."""

    def __init__(self, k: kube.Kube, known: cluster.Cluster, wake: Callable[[], None]) -> None:
        super().__init__("Servers")
        self._kube = k
        self._known = known
        self._wake = wake
        self._lock = threading.Lock()
        self._summaries: dict[str, cluster.ServerSummary] = {}
        self._waiting: dict[str, Server] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="server-watch", daemon=True)
        self._thread.start()

    def fold(self) -> list[Server] | None:
        """Before a pass, on the event loop: fold the Servers changed since the last pass into
        the cluster, and return the Servers waiting for a host (in no order); None until the
        first LIST is in."""
        if not self.synced.is_set():
            return None
        with self._lock:
            self._known.sync(self._summaries)
            return list(self._waiting.values())

    # ------------------------------------------------------------------ ListWatch
    def list_objects(self, **page: Any) -> dict[str, Any]:
        return self._kube.list_raw(constants.SERVERS, **page)

    def watch_call(self) -> listwatch.WatchCall:
        call = self._kube.custom.list_cluster_custom_object
        return call, (constants.GROUP, constants.VERSION, constants.SERVERS), {}

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        summaries: dict[str, cluster.ServerSummary] = {}
        waiting: dict[str, Server] = {}
        for item in items:
            server = Server.parse_or_none(item)
            if server is None:
                continue
            summaries[server.uid] = cluster.ServerSummary.of(server)
            if _waiting(server):
                waiting[server.uid] = server
        with self._lock:
            before, self._summaries, self._waiting = self._summaries, summaries, waiting
            for uid in before.keys() | summaries.keys():
                if before.get(uid) != summaries.get(uid):
                    self._known.touch(uid)
        if not self.synced.is_set():
            log.info("%d Servers", len(summaries))
        self._wake()

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            return
        server = None if kind == "DELETED" else Server.parse_or_none(obj)
        with self._lock:
            if server is None:  # gone, or no longer fits the model: as if gone
                self._summaries.pop(uid, None)
                self._waiting.pop(uid, None)
            else:
                self._summaries[uid] = cluster.ServerSummary.of(server)
                if _waiting(server):
                    self._waiting[uid] = server
                else:
                    self._waiting.pop(uid, None)
            # Under the lock: a fold between the change and its mark would lose the change.
            self._known.touch(uid)
        self._wake()
