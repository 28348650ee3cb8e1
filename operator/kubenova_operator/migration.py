"""Driving ServerMigrations (Nova's conductor live-migrate task) and draining hosts.

The controller owns a migration's phase. It checks what it can see itself (the Server can move,
the target is up, enabled and has room — the scheduler's filters, the source excluded), then
waits for the agents: the source reports the guest's CPU and a storage probe, the target
compares the CPU on its own libvirt, detects shared storage and prepares the disks. When the
target is ready the phase becomes Running and the source agent migrates; on its result the
controller rebinds the Server to the target (success) or records why not (failure). A target
that stops heartbeating, or a ServerMigration deleted while it runs, makes the controller ask
the source to abort; the guest stays where it is.

Every write is conditional on the resourceVersion the decision was made from, so a decision
made from a stale copy is refused (409) and made again from fresh data in the next pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, constants, kube
from kubenova_api.resources import TERMINAL_PHASES, MigrationPhase
from kubenova_operator import binding
from kubenova_operator.scheduling import claims, hosts, placement
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)

LIVE_PHASES = ("ACTIVE", "PAUSED")
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
)


@dataclasses.dataclass(frozen=True)
class ServerSummary:
    """What migrations need to know of a Server (from the controller's index)."""

    namespace: str
    name: str
    uid: str
    node: str | None
    phase: str | None
    flavor: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    deleting: bool

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ServerSummary:
        meta, status = body["metadata"], body.get("status") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            node=status.get("nodeName"),
            phase=status.get("phase"),
            flavor=status.get("flavor"),
            spec=dict(body.get("spec") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Accepted:
    target: str
    message: str
    live: bool
    flavor: dict[str, Any]
    """The size the server will have on the target (a new one for a resize)."""


def smig_ref(body: Mapping[str, Any]) -> kube.ObjectRef:
    return kube.ObjectRef.of(dict(body), "ServerMigration", constants.SERVERMIGRATIONS)


def is_active(body: Mapping[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") not in TERMINAL_PHASES


def moves(body: Mapping[str, Any], namespace: str, name: str) -> bool:
    """Whether ServerMigration ``body`` is about Server ``namespace/name``."""
    return bool(body["metadata"]["namespace"] == namespace and body["spec"]["serverRef"] == name)


def target_claims(
    migrations: list[dict[str, Any]], servers: Mapping[tuple[str, str], ServerSummary]
) -> list[claims.Claim]:
    """What migrations under way hold on their targets (the Server's size, counted there as
    well as on the source until the move ends, as Nova's migration allocations do)."""
    out = []
    for body in migrations:
        status = body.get("status") or {}
        target = status.get("targetNode")
        if not is_active(body) or not target:
            continue
        server = servers.get((body["metadata"]["namespace"], body["spec"]["serverRef"]))
        flavor = status.get("flavor") or (server.flavor if server else None)
        if server is None or not flavor or server.node == target:
            continue
        out.append(
            claims.Claim(f"{server.uid}/migration", target, hosts.Resources.from_api(dict(flavor)))
        )
    return out


class Migrator:
    """One pass over every ServerMigration, then over every host being drained."""

    def __init__(self, cfg: ControllerSettings, k: kube.Kube, evac_kube: kube.Kube) -> None:
        self.cfg = cfg
        self.kube = k
        self.evac_kube = evac_kube
        """Writes ``Hypervisor.status.evacuation`` under its own field manager (the liveness
        check applies ``conditions`` under the controller's)."""
        self._told: set[tuple[str, str]] = set()
        """Servers (and the flavor) told that their resize waits for a stop."""

    def run_pass(
        self,
        migrations: list[dict[str, Any]],
        servers: Mapping[tuple[str, str], ServerSummary],
        view: binding.ClusterView,
        assumed: claims.Claims,
    ) -> None:
        claimed = assumed.per_host(view.bound, view.alive_uids)
        states = {h.name: h for h in binding.host_states(view, claimed, self.cfg)}
        for body in sorted(migrations, key=_creation_order):
            try:
                self.step(body, migrations, servers, view, states)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                log.debug("migration %s changed meanwhile: %s", body["metadata"]["name"], exc)
        for name, hv in sorted(view.hypervisors.items()):
            if (hv.get("spec") or {}).get("evacuate") or (hv.get("status") or {}).get("evacuation"):
                self.evacuate(name, hv, migrations, servers)
        for server in servers.values():
            self.resize_if_asked(server, migrations)

    def resize_if_asked(self, server: ServerSummary, migrations: list[dict[str, Any]]) -> None:
        """A bound Server whose flavorRef no longer names the flavor it runs with is resized:
        by a cold migration once it is stopped (one attempt per flavor)."""
        current = (server.flavor or {}).get("name")
        wanted = server.spec.get("flavorRef")
        if not server.node or server.deleting or not current or wanted == current:
            return
        tried = [
            m
            for m in migrations
            if moves(m, server.namespace, server.name)
            and (m["spec"].get("flavorRef") == wanted or is_active(m))
        ]
        if tried:
            return
        ref = kube.ObjectRef("Server", constants.SERVERS, server.name, server.namespace, server.uid)
        if server.phase != "SHUTOFF":
            key = (server.uid, str(wanted))
            if key not in self._told:
                self._told.add(key)
                self.kube.event(
                    ref,
                    "ResizeWaitsForStop",
                    f"resize to {wanted} happens once the server is stopped (powerState: Stopped)",
                )
            return
        name = self._create(server, f"{server.name[:40]}-resize-", {"flavorRef": wanted}, {})
        self.kube.event(ref, "Resizing", f"resize to {wanted}: ServerMigration {name}")

    # ------------------------------------------------------------------ one migration
    def step(
        self,
        body: dict[str, Any],
        migrations: list[dict[str, Any]],
        servers: Mapping[tuple[str, str], ServerSummary],
        view: binding.ClusterView,
        states: dict[str, hosts.HostState],
    ) -> None:
        meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
        ref = smig_ref(body)
        phase = status.get("phase") or MigrationPhase.Pending
        deleting = bool(meta.get("deletionTimestamp"))
        if phase in TERMINAL_PHASES:
            if deleting:
                self.kube.remove_finalizer(ref, constants.FINALIZER_MIGRATION)
            return
        server = servers.get((meta["namespace"], spec["serverRef"]))
        if phase == MigrationPhase.Pending:
            if deleting:
                self.kube.remove_finalizer(ref, constants.FINALIZER_MIGRATION)
                return
            body = self.kube.add_finalizer(ref, body, constants.FINALIZER_MIGRATION)
            verdict = self.precheck(body, server, migrations, view, states)
            if isinstance(verdict, Failure):
                self._end(body, server, verdict, MigrationPhase.Failed)
                return
            assert server is not None
            self._write(
                body,
                phase=MigrationPhase.PreChecking,
                serverUID=server.uid,
                sourceNode=server.node,
                targetNode=verdict.target,
                live=verdict.live,
                flavor=verdict.flavor,
                startedAt=common.timestamp(),
                reason="PreChecking",
                message=verdict.message,
            )
            self._event(body, "PreChecking", verdict.message)
            return
        src, tgt = status.get("source") or {}, status.get("target") or {}
        source, target = status.get("sourceNode"), str(status.get("targetNode"))
        if phase in (MigrationPhase.PreChecking, MigrationPhase.Preparing):
            failure = self._check_preparation(body, server, src, tgt, states, deleting)
            if failure is not None:
                self._end(body, server, failure, MigrationPhase.Failed)
                return
            if tgt.get("prepared"):
                message = f"{source} → {target}: {tgt.get('message') or 'target ready'}"
                self._write(
                    body,
                    phase=MigrationPhase.Running,
                    blockMigration=not tgt.get("sharedStorage"),
                    reason="Running",
                    message=message,
                )
                self._event(body, "MigrationStarted", message)
            elif tgt.get("checked") and phase == MigrationPhase.PreChecking:
                self._write(
                    body,
                    phase=MigrationPhase.Preparing,
                    blockMigration=not tgt.get("sharedStorage"),
                    reason="Preparing",
                    message=f"pre-checks passed: {tgt.get('message')}",
                )
                self._event(body, "PreChecksPassed", f"{target}: {tgt.get('message')}")
            return
        # Running: the source agent migrates; wait for its result.
        result = src.get("result")
        if result == MigrationPhase.Succeeded and server is None:
            self._end(
                body,
                None,
                Failure("Migrated", f"moved to {target}; the Server was deleted meanwhile"),
                MigrationPhase.Succeeded,
            )
            return
        if result == MigrationPhase.Succeeded:
            assert server is not None
            self._succeed(body, server, str(src.get("message") or f"moved to {target}"))
            return
        if result == MigrationPhase.Failed:
            self._end(
                body,
                server,
                Failure(str(src.get("reason") or "MigrationFailed"), str(src.get("message"))),
                MigrationPhase.Failed,
            )
            return
        source_state = states.get(str(source))
        if source_state is not None and not source_state.up:
            # Nobody on the source can report: the target says whether the guest arrived.
            if tgt.get("arrived") and server is not None:
                self._succeed(body, server, f"the guest arrived on {target}; host {source} is down")
            elif deleting:
                self._end(
                    body,
                    server,
                    Failure(
                        "SourceDown",
                        f"cancelled while host {source} is down; the guest "
                        f"did not arrive on {target}",
                    ),
                    MigrationPhase.Failed,
                )
            return
        if status.get("abortRequested"):
            return
        abort = None
        if deleting:
            abort = "Cancelled: the ServerMigration was deleted"
        else:
            state = states.get(target)
            if state is not None and not state.up:
                abort = f"TargetDown: host {target} is down ({state.down_reason})"
        if abort is not None:
            self._write(body, abortRequested=abort)
            self._event(body, "Aborting", abort, warning=True)

    def precheck(
        self,
        body: dict[str, Any],
        server: ServerSummary | None,
        migrations: list[dict[str, Any]],
        view: binding.ClusterView,
        states: dict[str, hosts.HostState],
    ) -> Accepted | Failure:
        """Nova's conductor checks: the Server can move, and a target can take it. A running
        (or paused) Server moves live; a stopped one moves cold, optionally resized."""
        spec, meta = body["spec"], body["metadata"]
        if server is None or server.deleting:
            return Failure("ServerNotFound", f"Server {spec['serverRef']!r} does not exist")
        if not server.node or not server.flavor:
            return Failure("NotScheduled", "the Server is not on any host yet")
        for other in migrations:
            if (
                other["metadata"]["uid"] != meta["uid"]
                and moves(other, meta["namespace"], spec["serverRef"])
                and is_active(other)
                and (other.get("status") or {}).get("phase") not in (None, "Pending")
            ):
                return Failure(
                    "MigrationInProgress",
                    f"ServerMigration {other['metadata']['name']} is moving this Server already",
                )
        live = server.phase in LIVE_PHASES
        resize = spec.get("flavorRef")
        if resize and live:
            return Failure("ResizeNeedsStop", "stop the Server to resize it (cold migration)")
        if not live and server.phase != "SHUTOFF":
            return Failure(
                "NotMovable",
                f"the Server is {server.phase}; it moves live when ACTIVE or PAUSED, "
                "cold when SHUTOFF",
            )
        flavor = dict(server.flavor)
        if resize:
            new = view.flavors.get(resize)
            if new is None:
                return Failure("FlavorNotFound", f"Flavor {resize!r} does not exist")
            flavor = {
                "vcpus": int(new["vcpus"]),
                "memoryMiB": int(new["memoryMiB"]),
                "diskGiB": int(new.get("diskGiB", 0)),
                "name": resize,
            }
            if flavor["diskGiB"] < int(server.flavor.get("diskGiB", 0)):
                return Failure(
                    "FlavorDiskTooSmall",
                    f"Flavor {resize!r} has a smaller disk than the server's "
                    f"{server.flavor.get('diskGiB')} GiB; disks only grow",
                )
        wanted = spec.get("targetNode")
        if wanted == server.node:
            return Failure("SameHost", f"the Server is on {wanted} already")
        if wanted and wanted not in view.hypervisors:
            return Failure("TargetNotFound", f"there is no Hypervisor {wanted!r}")
        image = view.images.get(str(server.spec.get("imageRef")))
        if image is None:
            return Failure("ImageNotFound", f"Image {server.spec.get('imageRef')!r} is gone")
        group = (
            f"{server.namespace}/{server.spec['serverGroupRef']}"
            if server.spec.get("serverGroupRef")
            else None
        )
        members: dict[str, int] = {}
        if group is not None:
            bound = [c for c in view.bound if c.uid != server.uid]
            members = binding.group_members(group, bound, [])
        request = binding.placement_request(
            server.spec,
            hosts.Resources.from_api(flavor),
            image,
            view.groups.get(group) if group else None,
            members,
            wanted,
            ignore_hosts=frozenset({server.node}),
        )
        decision = placement.pick_host(request, list(states.values()), binding.weights(self.cfg))
        if isinstance(decision, placement.NoValidHost):
            what = f"host {wanted}" if wanted else "any host"
            return Failure("NoValidHost", f"cannot move to {what}: {decision.message}")
        binding.claim_on(states, decision.host, request.resources)
        how = "requested" if wanted else "picked by the scheduler"
        kind = "live" if live else "cold" + (f", resize to {resize}" if resize else "")
        return Accepted(
            decision.host,
            f"{server.node} → {decision.host} ({kind}, {how}): target up, enabled, room for "
            f"{request.resources.vcpus} vCPU / {request.resources.memory_mib} MiB; "
            "waiting for the agents' checks",
            live,
            flavor,
        )

    def _check_preparation(
        self,
        body: dict[str, Any],
        server: ServerSummary | None,
        src: Mapping[str, Any],
        tgt: Mapping[str, Any],
        states: Mapping[str, hosts.HostState],
        deleting: bool,
    ) -> Failure | None:
        status = body.get("status") or {}
        if deleting:
            return Failure("Cancelled", "the ServerMigration was deleted before the move began")
        if server is None or server.deleting or server.uid != status.get("serverUID"):
            return Failure("ServerNotFound", "the Server was deleted")
        if server.node != status.get("sourceNode"):
            return Failure("ServerMoved", f"the Server is on {server.node} now")
        if src.get("result") == MigrationPhase.Failed:
            return Failure(str(src.get("reason")), str(src.get("message")))
        if tgt.get("checked") and not tgt.get("compatible"):
            return Failure(str(tgt.get("reason") or "PreCheckFailed"), str(tgt.get("message")))
        for role in ("sourceNode", "targetNode"):
            state = states.get(str(status.get(role)))
            if state is not None and not state.up:
                return Failure("HostDown", f"host {state.name} is down ({state.down_reason})")
        started = common.parse_time(status.get("startedAt"))
        timeout = self.cfg.migration_prepare_timeout_seconds
        if started is not None and (dt.datetime.now(dt.UTC) - started).total_seconds() > timeout:
            waiting = "the target's checks" if not tgt.get("checked") else "the target's disks"
            return Failure("PreparationTimeout", f"{waiting} took longer than {timeout:.0f}s")
        return None

    def _succeed(self, body: dict[str, Any], server: ServerSummary, message: str) -> None:
        """The guest is on the target: bind the Server there (with the migration's flavor),
        then end the migration Succeeded."""
        status = body.get("status") or {}
        flavor = status.get("flavor") or dict(server.flavor or {})
        self._rebind(
            server, str(status.get("targetNode")), message, flavor, bool(status.get("live"))
        )
        self._end(body, server, Failure("Migrated", message), MigrationPhase.Succeeded)

    def _rebind(
        self, server: ServerSummary, target: str, message: str, flavor: dict[str, Any], live: bool
    ) -> None:
        ref = kube.ObjectRef("Server", constants.SERVERS, server.name, server.namespace, server.uid)
        current = self.kube.get(ref)
        status = current.get("status") or {}
        if status.get("nodeName") == target:
            return
        generation = current["metadata"].get("generation")
        cond = common.get_condition(status.get("conditions"), "Scheduled")
        conditions = common.set_condition(
            [cond] if cond else [],
            "Scheduled",
            "True",
            "Migrated",
            f"moved to {target}",
            generation,
        )
        self.kube.apply_status(
            ref,
            {"nodeName": target, "flavor": flavor, "conditions": conditions},
            resource_version=current["metadata"]["resourceVersion"],
        )
        how = "live-migrated" if live else "moved (cold)"
        if flavor.get("name") and flavor.get("name") != (server.flavor or {}).get("name"):
            how += f" and resized to {flavor['name']}"
        self.kube.event(ref, "Migrated", f"{how} to {target}: {message}")
        log.info("rebound %s/%s to %s", server.namespace, server.name, target)

    def _end(
        self,
        body: dict[str, Any],
        server: ServerSummary | None,
        outcome: Failure,
        phase: MigrationPhase,
    ) -> None:
        ok = phase is MigrationPhase.Succeeded
        generation = body["metadata"].get("generation")
        conditions = common.set_condition(
            list((body.get("status") or {}).get("conditions") or []),
            "Succeeded",
            "True" if ok else "False",
            outcome.reason,
            outcome.message,
            generation,
        )
        self._write(
            body,
            phase=phase,
            reason=outcome.reason,
            message=outcome.message,
            completedAt=common.timestamp(),
            conditions=conditions,
        )
        self._event(body, "Succeeded" if ok else outcome.reason, outcome.message, warning=not ok)
        if server is not None and not ok and (body.get("status") or {}).get("sourceNode"):
            ref = kube.ObjectRef(
                "Server", constants.SERVERS, server.name, server.namespace, server.uid
            )
            self.kube.event(
                ref, "MigrationFailed", f"{outcome.reason}: {outcome.message}", warning=True
            )
        log.log(
            logging.INFO if ok else logging.WARNING,
            "migration %s/%s %s: %s",
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            phase.value,
            outcome.message,
        )

    def _write(self, body: dict[str, Any], **changes: Any) -> None:
        status = body.get("status") or {}
        own = {f: status[f] for f in CONTROLLER_FIELDS if status.get(f) is not None}
        own.update({k: v for k, v in changes.items() if v is not None})
        for key in ("phase",):
            if key in own:
                own[key] = str(own[key])
        out = self.kube.apply_status(
            smig_ref(body), own, resource_version=body["metadata"]["resourceVersion"]
        )
        # Later steps of this pass on the same object build on what was just written.
        body["metadata"]["resourceVersion"] = out["metadata"]["resourceVersion"]
        body["status"] = out.get("status") or {}

    def _event(
        self, body: dict[str, Any], reason: str, message: str, warning: bool = False
    ) -> None:
        self.kube.event(smig_ref(body), reason, message, warning=warning)

    # ------------------------------------------------------------------ drain
    def evacuate(
        self,
        host: str,
        hv: Mapping[str, Any],
        migrations: list[dict[str, Any]],
        servers: Mapping[tuple[str, str], ServerSummary],
    ) -> None:
        """Live-migrate the host's Servers away, a few at a time; report progress."""
        ref = kube.ObjectRef("Hypervisor", constants.HYPERVISORS, host)
        old = (hv.get("status") or {}).get("evacuation")
        if not (hv.get("spec") or {}).get("evacuate"):
            if old:
                self.evac_kube.apply_status(ref, {})  # drain ended: drop its progress
            return
        ours = [
            m
            for m in migrations
            if (m["metadata"].get("labels") or {}).get(constants.EVACUATION_LABEL) == host
        ]
        active = [m for m in migrations if is_active(m)]
        from_here = [
            m
            for m in active
            if (m.get("status") or {}).get("sourceNode") == host
            or (m["metadata"].get("labels") or {}).get(constants.EVACUATION_LABEL) == host
        ]
        budget = min(
            self.cfg.max_migrations_per_host - len(from_here),
            self.cfg.max_migrations - len(active),
        )
        on_host = sorted(
            (s for s in servers.values() if s.node == host and not s.deleting),
            key=lambda s: (s.namespace, s.name),
        )
        blocked: list[str] = []
        moving = 0
        for server in on_host:
            if server.phase == "MIGRATING" or any(
                moves(m, server.namespace, server.name) for m in active
            ):
                moving += 1  # moving now (or its move just ended and the cache lags)
                continue
            failed = [
                m
                for m in ours
                if moves(m, server.namespace, server.name)
                and (m.get("status") or {}).get("phase") == "Failed"
            ]
            if failed:
                st = failed[-1].get("status") or {}
                blocked.append(
                    f"{server.namespace}/{server.name}: {st.get('reason')}: {st.get('message')}"
                )
                continue
            if server.phase not in (*LIVE_PHASES, "SHUTOFF"):
                blocked.append(
                    f"{server.namespace}/{server.name}: it is {server.phase}; servers move "
                    "when ACTIVE or PAUSED (live) or SHUTOFF (cold)"
                )
                continue
            if budget <= 0:
                continue
            self._create_evacuation(server, host)
            budget -= 1
            moving += 1
        migrated = sum(1 for m in ours if (m.get("status") or {}).get("phase") == "Succeeded")
        evacuation = {
            "total": len(on_host) + migrated,
            "migrated": migrated,
            "inProgress": moving,
            "remaining": len(on_host),
            "blocked": blocked,
        }
        if old == evacuation:
            return
        self.evac_kube.apply_status(ref, {"evacuation": evacuation})
        new_blocks = set(blocked) - set((old or {}).get("blocked") or [])
        for line in sorted(new_blocks):
            self.kube.event(ref, "CannotEvacuate", line, warning=True)
        if not on_host and (old or {}).get("remaining", 1) != 0:
            self.kube.event(ref, "Evacuated", f"every server moved away from {host}")
        elif blocked and len(blocked) == len(on_host) and moving == 0:
            log.warning("drain of %s is stuck: %s", host, "; ".join(blocked))

    def _create_evacuation(self, server: ServerSummary, host: str) -> None:
        name = self._create(
            server, f"{server.name[:40]}-evacuate-", {}, {constants.EVACUATION_LABEL: host}
        )
        log.info("draining %s: %s/%s moves away (%s)", host, server.namespace, server.name, name)

    def _create(
        self, server: ServerSummary, prefix: str, spec: dict[str, Any], labels: dict[str, str]
    ) -> str:
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": "ServerMigration",
            "metadata": {"generateName": prefix, "namespace": server.namespace, "labels": labels},
            "spec": {"serverRef": server.name, **spec},
        }
        out = self.kube.custom.create_namespaced_custom_object(
            constants.GROUP, constants.VERSION, server.namespace, constants.SERVERMIGRATIONS, body
        )
        return str(kube.as_dict(out)["metadata"]["name"])


def _creation_order(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (str(meta.get("creationTimestamp", "")), meta["namespace"], meta["name"])
