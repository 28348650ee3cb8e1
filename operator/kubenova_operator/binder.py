"""The binding loop: one pass at a time over every pending Server, in creation order.

Passes are serial, so two Servers never race for the same room; a pass runs when anything it
depends on changes (a Server, Flavor, Image or Hypervisor event) and at least every
``resync_seconds``. The snapshot a pass reads is taken on kopf's event loop, then the pass
runs in a thread because the Kubernetes client it writes with is synchronous."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubenova_api import kube
from kubenova_operator import binding, liveness, migration
from kubenova_operator.scheduling import claims
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

WRITERS = 8
"""API writes of one pass in flight at once."""


@dataclasses.dataclass
class Snapshot:
    view: binding.ClusterView
    pending: list[dict[str, Any]]
    migrations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    servers: Mapping[tuple[str, str], migration.ServerSummary] = dataclasses.field(
        default_factory=dict
    )


class Binder:
    def __init__(
        self, cfg: ControllerSettings, k: kube.Kube, migrator: migration.Migrator | None = None
    ) -> None:
        self.cfg = cfg
        self.kube = k
        self.migrator = migrator
        self.claims = claims.Claims()
        self._dirty = asyncio.Event()
        self._source: Callable[[], Snapshot] | None = None  # set once by the handlers

    @property
    def attached(self) -> bool:
        return self._source is not None

    def attach(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def kick(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.cfg.resync_seconds)
            except TimeoutError:
                pass
            self._dirty.clear()
            if self._source is None:
                continue
            snapshot: Snapshot = self._source()
            try:
                await asyncio.to_thread(
                    liveness.check_hosts, snapshot.view.hypervisors, self.cfg, self.kube
                )
            except Exception as exc:
                log.warning("checking host liveness failed: %s", exc)
            if self.migrator is not None:
                try:
                    await asyncio.to_thread(
                        self.migrator.run_pass,
                        snapshot.migrations,
                        snapshot.servers,
                        snapshot.view,
                        self.claims,
                    )
                except Exception:
                    log.exception("migration pass failed; retrying")
                    self._dirty.set()
            if not snapshot.pending:
                continue
            try:
                await asyncio.to_thread(self.run_pass, snapshot)
            except Exception:
                log.exception("scheduling pass failed; retrying")
                await asyncio.sleep(1.0)
                self._dirty.set()

    def run_pass(self, snapshot: Snapshot) -> None:
        """Decide for every pending Server in turn (each decision sees the claims of the ones
        before it), and write the decisions concurrently: a write no longer holds up the next
        decision, so a burst binds at the API server's pace rather than one round trip each."""
        bound = list(snapshot.view.bound)
        bound_uids = {c.uid for c in bound}
        view = dataclasses.replace(snapshot.view, bound=bound)
        claimed = self.claims.per_host(bound, view.alive_uids)
        states = {h.name: h for h in binding.host_states(view, claimed, self.cfg)}
        writes: list[tuple[str, concurrent.futures.Future[binding.Outcome]]] = []
        with concurrent.futures.ThreadPoolExecutor(WRITERS, "bind") as pool:
            for body in sorted(snapshot.pending, key=_creation_order):
                uid = body["metadata"]["uid"]
                if uid in bound_uids or self.claims.is_assumed(uid):
                    continue  # bound already; this copy of it is older than the binding
                name = _name(body)
                try:
                    binding.schedule(
                        body,
                        view,
                        self.claims,
                        self.cfg,
                        self.kube,
                        defer=functools.partial(_submit, writes, pool, name),
                        states=states,
                    )
                except Exception as exc:
                    log.warning("scheduling %s failed: %s", name, exc)
                    self._dirty.set()
        for name, future in writes:
            try:
                outcome = future.result()
            except Exception as exc:
                log.warning("recording the scheduling of %s failed: %s", name, exc)
                self._dirty.set()
                continue
            log.debug("%s: %s", name, outcome)
            if outcome.reason == "Stale":
                self._dirty.set()


def _submit(
    writes: list[tuple[str, concurrent.futures.Future[binding.Outcome]]],
    pool: concurrent.futures.ThreadPoolExecutor,
    name: str,
    fn: Callable[[], binding.Outcome],
) -> None:
    writes.append((name, pool.submit(fn)))


def _creation_order(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (str(meta.get("creationTimestamp", "")), meta["namespace"], meta["name"])


def _name(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"
