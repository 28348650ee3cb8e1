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
import datetime
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
from kubenova_operator.scheduling import claims, hosts
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

WRITERS = 24
"""Bindings in flight at once (the API client's connection pool is sized for them)."""
PASS_SPACING = 0.2
"""Seconds from the start of one pass to the start of the next, at the least."""


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
        self.host_states = hosts.StateCache()
        """Host states kept between passes (made again only for hosts that changed)."""
        self.last = PassStats()
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source: Callable[[], Snapshot | None] | None = None  # set once by the handlers
        # Bindings are written here, across passes: a pass decides and hands its writes over,
        # and the next pass does not wait for them (their claims are assumed until seen).
        self._writers = concurrent.futures.ThreadPoolExecutor(WRITERS, "bind")
        self._in_flight: set[concurrent.futures.Future[binding.Outcome]] = set()

    @property
    def attached(self) -> bool:
        return self._source is not None

    def attach(self, source: Callable[[], Snapshot | None]) -> None:
        """Where each pass reads its snapshot from; a snapshot of None (what it depends on
        is not read yet) skips the pass."""
        self._source = source

    def kick(self) -> None:
        self._dirty.set()

    def kick_threadsafe(self) -> None:
        """:meth:`kick` from a thread other than the event loop's."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dirty.set)

    def close(self) -> None:
        """Let the bindings handed over finish (each is a single write with a timeout)."""
        self._writers.shutdown(wait=True)

    def wait_for_writes(self, timeout: float | None = None) -> bool:
        """Wait until the bindings handed over so far are written (or failed); False if some
        are still in flight after ``timeout``."""
        _, not_done = concurrent.futures.wait(list(self._in_flight), timeout)
        return not not_done

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        started = 0.0
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.cfg.resync_seconds)
            except TimeoutError:
                pass
            # What arrives within PASS_SPACING of the last pass's start (a burst of creates,
            # bindings seen back, heartbeats) waits for one pass instead of a pass each.
            await asyncio.sleep(max(0.0, started + PASS_SPACING - time.monotonic()))
            self._dirty.clear()
            started = time.monotonic()
            snapshot = self._source() if self._source is not None else None
            if snapshot is not None:
                await self.one_pass(snapshot)

    async def one_pass(self, snapshot: Snapshot) -> None:
        """One pass over ``snapshot``: liveness, moves, networks, then the pending Servers."""
        started = time.monotonic()
        # Every pass, whether or not anything is pending: a claim outliving its binding's
        # return (the last Server of a burst) would count its room twice and hold up the
        # deletion of its Network until the next Server came.
        self._settle(snapshot)
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

    def _settle(self, snapshot: Snapshot) -> None:
        """Drop the claims whose binding the cluster shows now, or whose Server is gone
        (costs the bindings in flight; the pending Servers are looked at only for a claim
        whose Server the cluster does not know)."""
        cluster = snapshot.view.cluster
        pending: set[str] | None = None

        def alive(uid: str) -> bool:
            nonlocal pending
            if uid in cluster:
                return True
            if pending is None:
                pending = {server.uid for server in snapshot.pending}
            return uid in pending

        self.claims.settle(cluster.bound_to, alive)

    async def _step(self, what: str, fn: Callable[[Snapshot], None], snapshot: Snapshot) -> None:
        try:
            await asyncio.to_thread(fn, snapshot)
        except Exception:
            log.exception("%s failed; retrying", what)
            await asyncio.sleep(1.0)
            self.kick()

    def _liveness(self, snapshot: Snapshot) -> None:
        view = snapshot.view
        liveness.check_hosts(view.hypervisors, self.cfg, self.kube, view.heartbeats)

    def _moves(self, snapshot: Snapshot) -> None:
        view = snapshot.view
        states = binding.host_states(view, self.claims, self.cfg, self.host_states)
        self.fencing.run_pass(view.hypervisors, states, view.cluster)
        self.fencing.release_unbound(view.cluster, self.claims.is_assumed)
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
        before it) and hand the bindings to the writers: a write holds up neither the next
        decision nor the next pass, so a burst binds at the API server's pace rather than one
        round trip each. A Server whose binding is in flight is assumed, and skipped here; the
        claims are settled before, at the start of :meth:`one_pass`."""
        view = dataclasses.replace(
            snapshot.view, dhcp_reserved=self.networks.dhcp_reserved(snapshot.view.providers)
        )
        states = binding.host_states(view, self.claims, self.cfg, self.host_states)

        def defer(name: str) -> binding.Defer:
            def write(fn: Callable[[], binding.Outcome]) -> None:
                future = self._writers.submit(fn)
                self._in_flight.add(future)
                future.add_done_callback(lambda f: self._written(name, f))

            return write

        # Bound already, or its binding in flight or not yet seen back: skipped before
        # sorting, so that a pass sorts what it decides, not that whole backlog too (sorting
        # it, by a timestamp formatted anew each time, was 8 % of the controller's time at
        # 10,000 Servers).
        undecided = [
            server
            for server in snapshot.pending
            if not view.cluster.bound_to(server.uid) and not self.claims.is_assumed(server.uid)
        ]
        undecided.sort(key=_creation_order)
        for server in undecided:
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
                self.kick_threadsafe()

    def _written(self, name: str, future: concurrent.futures.Future[binding.Outcome]) -> None:
        """A binding's write is done (on the writer's thread)."""
        self._in_flight.discard(future)
        try:
            outcome = future.result()
        except Exception as exc:
            log.warning("recording the scheduling of %s failed: %s", name, exc)
            self.kick_threadsafe()  # its claim was forgotten: the next pass decides again
            return
        log.debug("%s: %s", name, outcome)
        metrics.SCHEDULING_OUTCOMES.labels(outcome.reason).inc()
        if outcome.reason == "Stale":
            self.kick_threadsafe()


def _creation_order(server: Server) -> datetime.datetime:
    """Sorted stably by this: Servers made within the same second (the timestamp's
    resolution) keep the order the watch delivered them in, which is the order they were
    made in (not their names': a Server named "a…" made after "b…" in the same second would
    otherwise take the room, or the quota, that "b…" asked for first)."""
    return server.metadata.creationTimestamp or _NEVER


_NEVER = datetime.datetime.min.replace(tzinfo=datetime.UTC)
"""Sorts a Server without a creation time (never from the API server) first."""
