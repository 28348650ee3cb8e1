"""Draining a host (Nova's host evacuation by live migration, ``nova host-evacuate-live``):
``Hypervisor.spec.evacuate: true`` moves every Server away — live when running or paused, cold
when stopped — a few at a time (``max_migrations_per_host`` from one host,
``max_migrations`` in the cluster), through ServerMigrations labelled with the host. Progress
(total, migrated, in progress, remaining, and the Servers that cannot move with why) is in
``Hypervisor.status.evacuation``, written under a field manager of its own."""

from __future__ import annotations

import dataclasses
import logging

from kubenova_api import constants, kube
from kubenova_api.common import ObjectMeta
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import (
    Evacuation,
    Hypervisor,
    HypervisorStatus,
    MigrationPhase,
    Phase,
    ServerMigration,
    ServerMigrationSpec,
)
from kubenova_operator import binding
from kubenova_operator.cluster import ServerSummary
from kubenova_operator.migrations import LIVE_PHASES, moves
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

MOVABLE = (*LIVE_PHASES, Phase.SHUTOFF)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a drain pass decided for one host."""

    progress: Evacuation
    start: tuple[ServerSummary, ...]
    """Servers to move now (within the budget)."""


def plan(
    host: str,
    on_host: list[ServerSummary],
    migrations: list[ServerMigration],
    budget: int,
) -> Plan:
    """Which Servers of ``host`` to move now, and the drain's progress. Pure: the decisions
    are unit-tested without an API server."""
    ours = [m for m in migrations if m.metadata.labels.get(constants.EVACUATION_LABEL) == host]
    active = [m for m in migrations if m.active]
    blocked: list[str] = []
    start: list[ServerSummary] = []
    moving = 0
    for server in on_host:
        if server.deleting:
            continue
        if server.phase is Phase.MIGRATING or any(
            moves(m, server.namespace, server.name) for m in active
        ):
            moving += 1  # moving now (or its move just ended and the cache lags)
            continue
        failed = [
            m
            for m in ours
            if moves(m, server.namespace, server.name) and m.phase is MigrationPhase.Failed
        ]
        if failed:
            last = failed[-1].status
            blocked.append(f"{server.full_name}: {last.reason}: {last.message}")
            continue
        if server.phase not in MOVABLE:
            phase = server.phase.value if server.phase else "not running yet"
            blocked.append(
                f"{server.full_name}: it is {phase}; servers move when ACTIVE or PAUSED (live) "
                "or SHUTOFF (cold)"
            )
            continue
        if budget <= len(start):
            continue
        start.append(server)
        moving += 1
    remaining = sum(1 for s in on_host if not s.deleting)
    migrated = sum(1 for m in ours if m.phase is MigrationPhase.Succeeded)
    progress = Evacuation(
        total=remaining + migrated,
        migrated=migrated,
        inProgress=moving,
        remaining=remaining,
        blocked=blocked,
    )
    return Plan(progress, tuple(start))


class Drains:
    """One pass over every Hypervisor being drained (or whose drain just ended)."""

    def __init__(self, cfg: ControllerSettings, k: kube.Kube, progress_kube: kube.Kube) -> None:
        self.cfg = cfg
        self.kube = k
        self.progress_kube = progress_kube
        """Writes ``Hypervisor.status.evacuation`` under its own field manager (the liveness
        check applies ``conditions`` under the controller's)."""

    def run_pass(self, view: binding.ClusterView, migrations: list[ServerMigration]) -> None:
        for _, hv in sorted(view.hypervisors.items()):
            if hv.spec.evacuate or hv.status.evacuation is not None:
                self.drain(hv, view, migrations)

    def drain(
        self, hv: Hypervisor, view: binding.ClusterView, migrations: list[ServerMigration]
    ) -> None:
        host = hv.name
        ref = ObjectRef.to(hv)
        old = hv.status.evacuation
        if not hv.spec.evacuate:
            if old is not None:
                self.progress_kube.apply_status(ref, HypervisorStatus())  # drop the progress
            return
        active = [m for m in migrations if m.active]
        from_here = [
            m
            for m in active
            if m.status.sourceNode == host
            or m.metadata.labels.get(constants.EVACUATION_LABEL) == host
        ]
        budget = max(
            0,
            min(
                self.cfg.max_migrations_per_host - len(from_here),
                self.cfg.max_migrations - len(active),
            ),
        )
        decided = plan(host, view.cluster.on_host(host), migrations, budget)
        for server in decided.start:
            self._create_evacuation(server, host)
        progress = decided.progress
        if old == progress:
            return
        self.progress_kube.apply_status(ref, HypervisorStatus(evacuation=progress))
        new_blocks = set(progress.blocked) - set(old.blocked if old is not None else [])
        for line in sorted(new_blocks):
            self.kube.event(ref, "CannotEvacuate", line, warning=True)
        if progress.remaining == 0 and (old is None or old.remaining != 0):
            self.kube.event(ref, "Evacuated", f"every server moved away from {host}")
        elif (
            progress.blocked
            and len(progress.blocked) == progress.remaining
            and progress.inProgress == 0
        ):
            log.warning("drain of %s is stuck: %s", host, "; ".join(progress.blocked))

    def _create_evacuation(self, server: ServerSummary, host: str) -> None:
        smig = ServerMigration(
            metadata=ObjectMeta(
                generateName=f"{server.name[:40]}-evacuate-",
                namespace=server.namespace,
                labels={constants.EVACUATION_LABEL: host},
            ),
            spec=ServerMigrationSpec(serverRef=server.name),
        )
        name = self.kube.create(smig)["metadata"]["name"]
        log.info("draining %s: %s moves away (%s)", host, server.full_name, name)
