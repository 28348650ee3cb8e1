"""Driving ServerMigrations (Nova's conductor live-migrate task): the controller owns a
migration's phase, and moves it on, one function per phase:

    Pending ──precheck──▶ PreChecking ──target checked──▶ Preparing ──target prepared──▶ Running
       │                      │                               │                           │
       └──────────────────────┴───────────── Failed ◀─────────┴─────── source failed ─────┤
                                                                     source succeeded ─▶ Succeeded

Each phase function looks at the migration, the Server and the hosts and returns what happens
next — a :class:`Next` phase (with the status it records), an :class:`End` (Succeeded or
Failed, with a typed :class:`~kubenova_api.resources.Outcome`), an :class:`AskAbort` of the
running move, or None (wait). :meth:`Driver.step` applies it in one conditional write: a
decision made from a stale copy is refused (409) and made again from fresh data next pass.

What the controller checks itself: the Server can move, the target is up, enabled and has room
(the scheduler's filters, the source excluded). What it waits for: the source agent's CPU
report and storage probe, the target agent's CPU comparison and preparation, the source
agent's result. A target that stops heartbeating, or a ServerMigration deleted while it runs,
makes it ask the source to abort; the guest stays where it is."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, constants, kube
from kubenova_api.common import Condition
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import (
    TERMINAL_PHASES,
    FlavorSnapshot,
    MigrationPhase,
    MigrationSourceReport,
    MigrationTargetReport,
    Outcome,
    Phase,
    Server,
    ServerMigration,
    ServerMigrationStatus,
    ServerStatus,
    SourceStep,
    TargetStep,
)
from kubenova_operator import binding, metrics, networks
from kubenova_operator.cluster import ServerSummary
from kubenova_operator.scheduling import claims, hosts, placement
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

LIVE_PHASES = (Phase.ACTIVE, Phase.PAUSED)
MIGRATED = "Migrated"
NOT_DECLARED = constants.FLAVOR_NOT_DECLARED
RESIZE_FAILED = "ResizeFailed"
"""The Event on a Server whose resize (a migration to its declared flavor) failed."""


# ----------------------------------------------------------------------------- transitions


@dataclasses.dataclass(frozen=True)
class Next:
    """Move to ``phase``, recording ``status`` (the fields set on it) and telling ``event``."""

    phase: MigrationPhase
    status: ServerMigrationStatus
    event: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class End:
    """The migration ends (Succeeded or Failed) with ``outcome``; on success the Server is
    rebound to the target first."""

    phase: MigrationPhase
    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class AskAbort:
    """Ask the source agent to abort the running move."""

    why: Outcome


Transition = Next | End | AskAbort | None


def failed(reason: str, message: str) -> End:
    return End(MigrationPhase.Failed, Outcome(reason=reason, message=message))


def succeeded(message: str) -> End:
    return End(MigrationPhase.Succeeded, Outcome(reason=MIGRATED, message=message))


@dataclasses.dataclass(frozen=True)
class Context:
    """What a phase function looks at."""

    smig: ServerMigration
    server: ServerSummary | None
    view: binding.ClusterView
    states: dict[str, hosts.HostState]
    assumed: claims.Claims
    cfg: ControllerSettings
    others: tuple[ServerMigration, ...] = ()
    """The other ServerMigrations (a Server moves one at a time)."""

    @property
    def source(self) -> MigrationSourceReport:
        return self.smig.status.source or MigrationSourceReport()

    @property
    def target(self) -> MigrationTargetReport:
        return self.smig.status.target or MigrationTargetReport()

    def host(self, name: str | None) -> hosts.HostState | None:
        return self.states.get(name) if name else None


def moves(smig: ServerMigration, namespace: str, name: str) -> bool:
    """Whether ``smig`` is about Server ``namespace/name``."""
    return smig.namespace == namespace and smig.spec.serverRef == name


def target_claims(
    migrations: list[ServerMigration], servers: Callable[[tuple[str, str]], ServerSummary | None]
) -> tuple[claims.Claim, ...]:
    """What migrations under way hold on their targets (the Server's size, counted there as
    well as on the source until the move ends, as Nova's migration allocations do)."""
    out = []
    for smig in migrations:
        target = smig.status.targetNode
        if not smig.active or not target:
            continue
        server = servers((smig.namespace or "", smig.spec.serverRef))
        if server is None or server.node == target:
            continue
        if smig.status.flavor is not None:
            size = hosts.Resources.of(smig.status.flavor)
        elif server.flavor is not None:
            size = server.flavor
        else:
            continue
        out.append(claims.Claim(f"{server.uid}/migration", target, size))
    return tuple(out)


# ----------------------------------------------------------------------------- phases


def on_pending(ctx: Context) -> Transition:
    """Nova's conductor checks: the Server can move, and a target can take it. A running (or
    paused) Server moves live; a stopped one moves cold, optionally resized."""
    verdict = precheck(ctx)
    if isinstance(verdict, End):
        return verdict
    server, (target, live, flavor, message) = ctx.server, verdict
    assert server is not None
    return Next(
        MigrationPhase.PreChecking,
        ServerMigrationStatus(
            serverUID=server.uid,
            sourceNode=server.node,
            targetNode=target,
            live=live,
            flavor=flavor,
            startedAt=common.now(),
            reason="PreChecking",
            message=message,
        ),
        ("PreChecking", message),
    )


def on_prechecking(ctx: Context) -> Transition:
    """Waiting for the agents' checks: the target's CPU comparison and storage probe."""
    broken = preparation_broken(ctx)
    if broken is not None:
        return broken
    if ctx.target.step is TargetStep.Prepared:
        return _to_running(ctx)
    if ctx.target.step is TargetStep.Checked:
        found = ctx.target.message or ""
        return Next(
            MigrationPhase.Preparing,
            ServerMigrationStatus(
                blockMigration=not ctx.target.sharedStorage,
                reason="Preparing",
                message=f"pre-checks passed: {found}",
            ),
            ("PreChecksPassed", f"{ctx.smig.status.targetNode}: {found}"),
        )
    return None


def on_preparing(ctx: Context) -> Transition:
    """Waiting for the target's images and disks."""
    broken = preparation_broken(ctx)
    if broken is not None:
        return broken
    if ctx.target.step is TargetStep.Prepared:
        return _to_running(ctx)
    return None


def _to_running(ctx: Context) -> Next:
    status = ctx.smig.status
    message = f"{status.sourceNode} → {status.targetNode}: {ctx.target.message or 'target ready'}"
    return Next(
        MigrationPhase.Running,
        ServerMigrationStatus(
            blockMigration=not ctx.target.sharedStorage, reason="Running", message=message
        ),
        ("MigrationStarted", message),
    )


def on_running(ctx: Context) -> Transition:
    """The source agent migrates: wait for its result, or for the target's word when the
    source host is down; ask for an abort when the target dies or the migration is deleted."""
    status, source = ctx.smig.status, ctx.source
    target = str(status.targetNode)
    if source.step is SourceStep.Succeeded:
        if ctx.server is None:
            return End(
                MigrationPhase.Succeeded,
                Outcome(reason=MIGRATED, message=f"moved to {target}; the Server was deleted"),
            )
        return succeeded(source.message or f"moved to {target}")
    if source.step is SourceStep.Failed:
        return failed(source.reason or "MigrationFailed", source.message or "")
    src_host = ctx.host(status.sourceNode)
    if src_host is not None and not src_host.up:
        # Nobody on the source can report: the target says whether the guest arrived.
        if ctx.target.step is TargetStep.Arrived and ctx.server is not None:
            return succeeded(f"the guest arrived on {target}; host {status.sourceNode} is down")
        if ctx.smig.metadata.deleting:
            return failed(
                "SourceDown",
                f"cancelled while host {status.sourceNode} is down; the guest did not arrive "
                f"on {target}",
            )
        return None
    if status.abortRequested is not None:
        return None
    if ctx.smig.metadata.deleting:
        return AskAbort(Outcome(reason="Cancelled", message="the ServerMigration was deleted"))
    tgt_host = ctx.host(target)
    if tgt_host is not None and not tgt_host.up:
        why = f"host {target} is down ({tgt_host.down_reason})"
        return AskAbort(Outcome(reason="TargetDown", message=why))
    return None


PHASES: dict[MigrationPhase, Callable[[Context], Transition]] = {
    MigrationPhase.Pending: on_pending,
    MigrationPhase.PreChecking: on_prechecking,
    MigrationPhase.Preparing: on_preparing,
    MigrationPhase.Running: on_running,
}


# ----------------------------------------------------------------------------- checks


Accepted = tuple[str, bool, FlavorSnapshot, str]
"""(target host, live, the size on the target, what was decided)"""


def precheck(ctx: Context) -> Accepted | End:
    """The Server can move, and a target can take it (claimed in ``ctx.states``)."""
    smig, server, view = ctx.smig, ctx.server, ctx.view
    spec = smig.spec
    if server is None or server.deleting:
        return failed("ServerNotFound", f"Server {spec.serverRef!r} does not exist")
    if not server.node or server.flavor is None:
        return failed("NotScheduled", "the Server is not on any host yet")
    for other in ctx.others:
        if (
            other.uid != smig.uid
            and moves(other, server.namespace, server.name)
            and other.active
            and other.phase is not MigrationPhase.Pending
        ):
            return failed(
                "MigrationInProgress",
                f"ServerMigration {other.name} is moving this Server already",
            )
    if spec.flavorRef and spec.flavorRef != server.flavor_ref:
        # The Server's spec declares its flavor; a migration that changed it behind the spec's
        # back would be moved back by the resize that the difference then asks for.
        return failed(
            NOT_DECLARED,
            f"flavorRef {spec.flavorRef!r} is not the Server's flavorRef "
            f"({server.flavor_ref!r}): resize by setting the Server's spec.flavorRef, which "
            "moves it by itself once stopped",
        )
    live = server.phase in LIVE_PHASES
    resize = spec.flavorRef if spec.flavorRef != server.flavor_name else None
    if resize and live:
        return failed("ResizeNeedsStop", "stop the Server to resize it (cold migration)")
    if not live and server.phase is not Phase.SHUTOFF:
        return failed(
            "NotMovable",
            f"the Server is {server.phase}; it moves live when ACTIVE or PAUSED, cold when SHUTOFF",
        )
    size, flavor_name = server.flavor, server.flavor_name
    if resize:
        new = view.flavors.get(resize)
        if new is None:
            return failed("FlavorNotFound", f"Flavor {resize!r} does not exist")
        if new.diskGiB < server.flavor.disk_gib:
            return failed(
                "FlavorDiskTooSmall",
                f"Flavor {resize!r} has a smaller disk than the server's "
                f"{server.flavor.disk_gib} GiB; disks only grow",
            )
        size, flavor_name = hosts.Resources(new.vcpus, new.memoryMiB, new.diskGiB), resize
    wanted = spec.targetNode
    if wanted == server.node:
        return failed("SameHost", f"the Server is on {wanted} already")
    if wanted and wanted not in view.hypervisors:
        return failed("TargetNotFound", f"there is no Hypervisor {wanted!r}")
    image = view.images.get(server.image_ref)
    if image is None:
        return failed("ImageNotFound", f"Image {server.image_ref!r} is gone")
    group = server.group
    members = (
        binding.group_members(group, view.cluster, ctx.assumed, exclude=server.uid)
        if group is not None
        else {}
    )
    physnets, overlay = networks.needs(server.networks, view.providers)
    request = binding.placement_request(
        server.zone,
        size,
        image,
        view.groups.get(group) if group else None,
        members,
        wanted,
        ignore_hosts=frozenset({server.node}),
        physnets=physnets,
        overlay=overlay,
    )
    decision = placement.pick_host(request, list(ctx.states.values()), binding.weights(ctx.cfg))
    if isinstance(decision, placement.NoValidHost):
        what = f"host {wanted}" if wanted else "any host"
        return failed("NoValidHost", f"cannot move to {what}: {decision.message}")
    binding.claim_on(ctx.states, decision.host, request.resources)
    how = "requested" if wanted else "picked by the scheduler"
    kind = "live" if live else "cold" + (f", resize to {resize}" if resize else "")
    message = (
        f"{server.node} → {decision.host} ({kind}, {how}): target up, enabled, room for "
        f"{size.vcpus} vCPU / {size.memory_mib} MiB; waiting for the agents' checks"
    )
    return decision.host, live, size.snapshot(flavor_name), message


def preparation_broken(ctx: Context) -> End | None:
    """Why a migration being checked or prepared cannot go on, if it cannot."""
    smig, server, status = ctx.smig, ctx.server, ctx.smig.status
    if smig.metadata.deleting:
        return failed("Cancelled", "the ServerMigration was deleted before the move began")
    if server is None or server.deleting or server.uid != status.serverUID:
        return failed("ServerNotFound", "the Server was deleted")
    if server.node != status.sourceNode:
        return failed("ServerMoved", f"the Server is on {server.node} now")
    if ctx.source.step is SourceStep.Failed:
        return failed(ctx.source.reason or "SourceFailed", ctx.source.message or "")
    if ctx.target.step is TargetStep.Refused:
        return failed(ctx.target.reason or "PreCheckFailed", ctx.target.message or "")
    for name in (status.sourceNode, status.targetNode):
        state = ctx.host(name)
        if state is not None and not state.up:
            return failed("HostDown", f"host {state.name} is down ({state.down_reason})")
    timeout = ctx.cfg.migration_prepare_timeout_seconds
    started = status.startedAt
    if started is not None and (dt.datetime.now(dt.UTC) - started).total_seconds() > timeout:
        waiting = (
            "the target's checks" if ctx.target.step is TargetStep.Waiting else "the target's disks"
        )
        return failed("PreparationTimeout", f"{waiting} took longer than {timeout:.0f}s")
    return None


# ----------------------------------------------------------------------------- applying


CONTROLLER_FIELDS = (
    "phase",
    "serverUID",
    "sourceNode",
    "targetNode",
    "live",
    "flavor",
    "blockMigration",
    "abortRequested",
    "reason",
    "message",
    "startedAt",
    "completedAt",
    "conditions",
    "observedGeneration",
)
"""The fields of a ServerMigration's status the controller owns."""


class Driver:
    """Runs one pass over every ServerMigration: one phase function each, one write each."""

    def __init__(self, cfg: ControllerSettings, k: kube.Kube) -> None:
        self.cfg = cfg
        self.kube = k

    def run_pass(
        self,
        smigs: list[ServerMigration],
        view: binding.ClusterView,
        states: dict[str, hosts.HostState],
        assumed: claims.Claims,
    ) -> None:
        for smig in sorted(smigs, key=_creation_order):
            try:
                self.step(smig, view, states, assumed, tuple(smigs))
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                log.debug("migration %s changed meanwhile: %s", smig.name, exc)

    def step(
        self,
        smig: ServerMigration,
        view: binding.ClusterView,
        states: dict[str, hosts.HostState],
        assumed: claims.Claims,
        others: tuple[ServerMigration, ...] = (),
    ) -> Transition:
        ref = ObjectRef.to(smig)
        if not smig.active:
            if smig.metadata.deleting:
                self.kube.remove_finalizer(ref, constants.FINALIZER_MIGRATION)
            return None
        if smig.phase is MigrationPhase.Pending:
            if smig.metadata.deleting:
                self.kube.remove_finalizer(ref, constants.FINALIZER_MIGRATION)
                return None
            smig = self.kube.add_finalizer(smig, constants.FINALIZER_MIGRATION)
        server = view.cluster.get((smig.namespace or "", smig.spec.serverRef))
        ctx = Context(smig, server, view, states, assumed, self.cfg, others)
        transition = PHASES[smig.phase](ctx)
        self.apply(smig, server, transition)
        return transition

    def apply(
        self, smig: ServerMigration, server: ServerSummary | None, transition: Transition
    ) -> None:
        """Record ``transition`` in one conditional write (and its Events)."""
        if transition is None:
            return
        if isinstance(transition, AskAbort):
            self._write(smig, ServerMigrationStatus(abortRequested=transition.why))
            self._event(smig, "Aborting", str(transition.why), warning=True)
        elif isinstance(transition, Next):
            status = transition.status.model_copy()
            status.phase = transition.phase
            self._write(smig, status)
            self._event(smig, *transition.event)
        else:
            if transition.phase is MigrationPhase.Succeeded and server is not None:
                self._rebind(smig, server, transition.outcome.message)
            self._end(smig, server, transition)

    def _write(self, smig: ServerMigration, changes: ServerMigrationStatus) -> None:
        """Apply the controller's fields: what the object has, with ``changes`` on top."""
        status = ServerMigrationStatus()
        for name in CONTROLLER_FIELDS:
            value = getattr(smig.status, name)
            if value is not None and value != []:
                setattr(status, name, value)
        for name in changes.model_fields_set:
            setattr(status, name, getattr(changes, name))
        status.observedGeneration = smig.metadata.generation
        status.conditions = progress_conditions(status, smig.metadata.generation)
        self.kube.apply_status(
            ObjectRef.to(smig), status, resource_version=smig.metadata.resourceVersion
        )

    def _end(self, smig: ServerMigration, server: ServerSummary | None, end: End) -> None:
        ok = end.phase is MigrationPhase.Succeeded
        outcome = end.outcome
        completed = common.now()
        conditions = common.set_condition(
            smig.status.conditions,
            "Succeeded",
            "True" if ok else "False",
            outcome.reason,
            outcome.message,
            smig.metadata.generation,
        )
        self._write(
            smig,
            ServerMigrationStatus(
                phase=end.phase,
                reason=outcome.reason,
                message=outcome.message,
                completedAt=completed,
                conditions=conditions,
            ),
        )
        progress = smig.status.progress
        metrics.migration_ended(
            outcome.reason,
            smig.status.startedAt,
            completed,
            progress.downtimeMs if progress is not None and smig.status.live and ok else None,
        )
        self._event(smig, "Succeeded" if ok else outcome.reason, outcome.message, warning=not ok)
        if server is not None and not ok:
            ref = ObjectRef.named(Server, server.name, server.namespace, server.uid)
            to = smig.spec.flavorRef
            if to and to == server.flavor_ref and to != server.flavor_name:
                # The Server asked for this resize: it says why it did not happen, and how
                # to have it tried again (one attempt per flavor).
                self.kube.event(
                    ref,
                    RESIZE_FAILED,
                    f"resize to {to} failed ({outcome}); it keeps {server.flavor_name}. "
                    f"Delete ServerMigration {smig.name} to try again, or set spec.flavorRef "
                    f"back to {server.flavor_name}",
                    warning=True,
                )
            elif smig.status.sourceNode:
                self.kube.event(ref, "MigrationFailed", str(outcome), warning=True)
        log.log(
            logging.INFO if ok else logging.WARNING,
            "migration %s %s: %s",
            smig.full_name,
            end.phase.value,
            outcome.message,
        )

    def _rebind(self, smig: ServerMigration, server: ServerSummary, message: str) -> None:
        """The guest is on the target: bind the Server there, with the migration's flavor."""
        target = str(smig.status.targetNode)
        current = self.kube.get(Server, server.name, server.namespace)
        if current is None or current.status.nodeName == target:
            return
        flavor = smig.status.flavor or current.status.flavor
        scheduled = common.get_condition(current.status.conditions, "Scheduled")
        status = ServerStatus(
            nodeName=target,
            conditions=common.set_condition(
                [scheduled] if scheduled is not None else [],
                "Scheduled",
                "True",
                MIGRATED,
                f"moved to {target}",
                current.metadata.generation,
            ),
        )
        if flavor is not None:
            status.flavor = flavor
        # Every field this manager owns goes in each apply (one it leaves out is removed):
        # the addresses stay the Server's, wherever it runs.
        status.addresses = current.status.addresses
        if current.status.image is not None:
            status.image = current.status.image  # still the same bits (left out: removed)
        self.kube.apply_status(
            ObjectRef.to(current), status, resource_version=current.metadata.resourceVersion
        )
        how = "live-migrated" if smig.status.live else "moved (cold)"
        if flavor is not None and flavor.name and flavor.name != server.flavor_name:
            how += f" and resized to {flavor.name}"
        self.kube.event(ObjectRef.to(current), MIGRATED, f"{how} to {target}: {message}")
        log.info("rebound %s to %s", server.full_name, target)

    def _event(
        self, smig: ServerMigration, reason: str, message: str, warning: bool = False
    ) -> None:
        self.kube.event(ObjectRef.to(smig), reason, message, warning=warning)


def progress_conditions(status: ServerMigrationStatus, generation: int) -> list[Condition]:
    """kstatus's conditions (what Flux and Argo CD read) for the phase ``status`` records:
    Reconciling while the migration runs, Stalled once it failed (the reason and message of
    the failure), neither once it succeeded — the object is then Current, and its Succeeded
    condition says how it ended."""
    phase = status.phase or MigrationPhase.Pending
    failed = phase is MigrationPhase.Failed
    running = phase not in TERMINAL_PHASES
    conditions = status.conditions
    reason, message = status.reason or phase.value, status.message or ""
    if running:
        reason = "Aborting" if status.abortRequested is not None else phase.value
        message = str(status.abortRequested) if status.abortRequested else _running(status)
    for type_, on in (("Reconciling", running), ("Stalled", failed)):
        said: tuple[common.ConditionStatus, str, str] = (
            ("True", reason, message) if on else ("False", phase.value, "")
        )
        conditions = common.set_condition(conditions, type_, *said, generation)
    return conditions


def _running(status: ServerMigrationStatus) -> str:
    where = f" from {status.sourceNode}" if status.sourceNode else ""
    where += f" to {status.targetNode}" if status.targetNode else ""
    return f"moving the server{where}"


def _creation_order(smig: ServerMigration) -> tuple[str, str, str]:
    meta = smig.metadata
    when = meta.creationTimestamp.isoformat() if meta.creationTimestamp else ""
    return (when, meta.namespace or "", meta.name)
