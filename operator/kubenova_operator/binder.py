"""The controller's loop: one pass at a time — host liveness, migrations, drains, resizes and
the images of rebuilds, networks (VNIs, the hosts of each network, deletion), then every
pending Server in creation order.

Passes are serial, so two Servers never race for the same room; a pass runs when anything it
depends on changes (an event) and at least every ``resync_seconds``. The snapshot a pass reads
is taken on kopf's event loop (folding only the Servers that changed into the incremental
:class:`~kubenova_operator.cluster.Cluster`), then the pass runs in a thread because the
Kubernetes client it writes with is synchronous."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable

from kubenova_api import kube
from kubenova_api.resources import Server, ServerMigration
from kubenova_operator import (
    binding,
    evacuation,
    fencing,
    liveness,
    metrics,
    migrations,
    networks,
    rebuild,
    resize,
)
from kubenova_operator.scheduling import claims
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

WRITERS = 8
"""API writes of one pass in flight at once."""


@dataclasses.dataclass
class Snapshot:
    view: binding.ClusterView
    pending: list[Server]
    migrations: list[ServerMigration] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PassStats:
    """What the last pass cost (logged at debug level; read by tests)."""

    synced: int = 0
    pending: int = 0
    seconds: float = 0.0


class Binder:
    def __init__(
        self,
        cfg: ControllerSettings,
        k: kube.Kube,
        driver: migrations.Driver | None = None,
        drains: evacuation.Drains | None = None,
    ) -> None:
        self.cfg = cfg
        self.kube = k
        self.migrations = driver
        self.drains = drains
        self.resizes = resize.Resizes(k)
        self.repins = rebuild.Repins(k)
        self.networks = networks.NetworkPass(k)
        self.fencing = fencing.Fencing(k)
        self.claims = claims.Claims()
        self.last = PassStats()
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
            started = time.monotonic()
            snapshot: Snapshot = self._source()
            await self._step("checking host liveness", self._liveness, snapshot)
            await self._step("migration pass", self._moves, snapshot)
            await self._step("network pass", self._networks, snapshot)
            if snapshot.pending:
                await self._step("scheduling pass", self.run_pass, snapshot)
            self.last.pending = len(snapshot.pending)
            self.last.seconds = time.monotonic() - started
            # The index may still hold a copy from before its binding: the cluster knows.
            bound = snapshot.view.cluster.bound_to
            metrics.PENDING.set(sum(1 for s in snapshot.pending if not bound(s.uid)))
            metrics.PASS_SECONDS.observe(self.last.seconds)

    async def _step(self, what: str, fn: Callable[[Snapshot], None], snapshot: Snapshot) -> None:
        try:
            await asyncio.to_thread(fn, snapshot)
        except Exception:
            log.exception("%s failed; retrying", what)
            await asyncio.sleep(1.0)
            self._dirty.set()

    def _liveness(self, snapshot: Snapshot) -> None:
        liveness.check_hosts(snapshot.view.hypervisors, self.cfg, self.kube)

    def _moves(self, snapshot: Snapshot) -> None:
        view = snapshot.view
        states = binding.host_states(view, self.claims, self.cfg)
        self.fencing.run_pass(view.hypervisors, states, view.cluster)
        if self.migrations is not None:
            self.migrations.run_pass(snapshot.migrations, view, states, self.claims)
        if self.drains is not None:
            self.drains.run_pass(view, snapshot.migrations)
        self.resizes.run_pass(view.cluster, snapshot.migrations)
        self.repins.run_pass(view.cluster, view.images)

    def _networks(self, snapshot: Snapshot) -> None:
        view = snapshot.view
        self.networks.run_pass(
            networks.Inputs(
                networks=view.networks,
                providers=view.providers,
                hypervisors=view.hypervisors,
                cluster=view.cluster,
                assumed=self.claims,
                migrations=snapshot.migrations,
            )
        )

    def run_pass(self, snapshot: Snapshot) -> None:
        """Decide for every pending Server in turn (each decision sees the claims of the ones
        before it), and write the decisions concurrently: a write no longer holds up the next
        decision, so a burst binds at the API server's pace rather than one round trip each."""
        view = dataclasses.replace(
            snapshot.view, dhcp_reserved=self.networks.dhcp_reserved(snapshot.view.providers)
        )
        pending = {server.uid for server in snapshot.pending}
        self.claims.settle(view.cluster.bound_to, lambda uid: uid in view.cluster or uid in pending)
        states = binding.host_states(view, self.claims, self.cfg)
        writes: list[tuple[str, concurrent.futures.Future[binding.Outcome]]] = []

        def defer(name: str) -> binding.Defer:
            return lambda fn: writes.append((name, pool.submit(fn)))

        with concurrent.futures.ThreadPoolExecutor(WRITERS, "bind") as pool:
            for server in sorted(snapshot.pending, key=_creation_order):
                if view.cluster.bound_to(server.uid) or self.claims.is_assumed(server.uid):
                    continue  # bound already; this copy of it is older than the binding
                try:
                    binding.schedule(
                        server,
                        view,
                        self.claims,
                        states,
                        self.cfg,
                        self.kube,
                        defer=defer(server.full_name),
                    )
                except Exception as exc:
                    log.warning("scheduling %s failed: %s", server.full_name, exc)
                    self._dirty.set()
        for name, future in writes:
            try:
                outcome = future.result()
            except Exception as exc:
                log.warning("recording the scheduling of %s failed: %s", name, exc)
                self._dirty.set()
                continue
            log.debug("%s: %s", name, outcome)
            metrics.SCHEDULING_OUTCOMES.labels(outcome.reason).inc()
            if outcome.reason == "Stale":
                self._dirty.set()


def _creation_order(server: Server) -> tuple[str, str, str]:
    meta = server.metadata
    when = meta.creationTimestamp.isoformat() if meta.creationTimestamp else ""
    return (when, meta.namespace or "", meta.name)
