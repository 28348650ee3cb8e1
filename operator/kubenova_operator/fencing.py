"""A dead host strands nothing (Nova's force-down + evacuate; Kubernetes' out-of-service taint).

Only a host's own agent removes its Servers' domains, so a Server whose host died could never be
deleted (its finalizer stayed) nor moved (a move needs the source agent). An admin who knows the
host is dead and fenced — powered off, cut from its storage — sets the Hypervisor's
``spec.outOfService``. While that host is also down (no heartbeat within the grace period), each
Server bound to it is

* **released** when it is being deleted: the controller removes the agent's finalizer, with a
  Warning Event that the domain and its disks may remain on the dead host;
* **evacuated** otherwise: unbound (``nodeName`` and the dead agent's runtime fields removed,
  ``evacuatedFrom`` set, BUILD) so that the scheduler places it on another host, whose agent
  rebuilds it with the same UID and name — on its disk when the instances folder is shared, else
  from its image (the agent says which in ``diskRebuilt`` and an Event).

A Server deleted before any host took it (never bound, or taken from a dead host and not yet
bound again) is held by the agents' finalizer too — every Server gets it at creation
(``deploy/admission/domain-finalizer.yaml``) — but no agent will remove it: the controller does
(:meth:`Fencing.release_unbound`), once no binding of it is in flight, and only if the Server
is still unbound when it does (the removal is conditional on the resourceVersion it read).

When the host comes back, its agent removes the stale domains (and the disks that were rebuilt
elsewhere) before it starts anything (``kubenova_agent.main.Agent.sweep_orphans``).

The mark is the admin's promise that the host's guests no longer run. A host marked out of
service that still heartbeats is not fenced: its Servers are left alone (running a guest twice
would corrupt its disk), and that is said in an Event.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, constants, kube
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import Hypervisor, Phase, Server, ServerStatus
from kubenova_operator.cluster import Cluster, ServerSummary
from kubenova_operator.scheduling import hosts

log = logging.getLogger(__name__)
_T = TypeVar("_T")

EVACUATING = "Evacuating"
RELEASED = "DomainMayRemain"

RUNTIME_FIELDS = (
    "nodeName",
    "powerState",
    "domainName",
    "observedGeneration",
    "launchedAt",
    "restartCount",
    "diskRebuilt",
)
"""What the dead host's agent (and the binding to it) said, removed when a Server is taken away
from it: the next host's agent says its own."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one pass does for the out-of-service hosts."""

    release: tuple[tuple[ServerSummary, str], ...] = ()
    """Deleting Servers whose finalizer the controller removes, with their dead host."""
    evacuate: tuple[tuple[ServerSummary, str], ...] = ()
    """Servers to take away from their dead host and schedule again."""
    not_fenced: tuple[str, ...] = ()
    """Hosts marked out of service that are still up: left alone."""


def plan(hypervisors: Mapping[str, Hypervisor], up: Mapping[str, bool], cluster: Cluster) -> Plan:
    """Pure: which Servers of out-of-service hosts to release or evacuate now."""
    release: list[tuple[ServerSummary, str]] = []
    evacuate: list[tuple[ServerSummary, str]] = []
    not_fenced: list[str] = []
    for name, hv in sorted(hypervisors.items()):
        if not hv.spec.outOfService:
            continue
        if up.get(name, False):
            not_fenced.append(name)
            continue
        for server in cluster.on_host(name):
            (release if server.deleting else evacuate).append((server, name))
    return Plan(tuple(release), tuple(evacuate), tuple(not_fenced))


class Fencing:
    """One pass over the out-of-service hosts (serial, in the controller's loop)."""

    def __init__(self, k: kube.Kube) -> None:
        self.kube = k
        self._warned: set[str] = set()

    def run_pass(
        self,
        hypervisors: Mapping[str, Hypervisor],
        states: Mapping[str, hosts.HostState],
        cluster: Cluster,
    ) -> Plan:
        decided = plan(hypervisors, {n: s.up for n, s in states.items()}, cluster)
        for server, host in decided.release:
            self._guarded(server, f"taking it from {host}", partial(self.release, server, host))
        for server, host in decided.evacuate:
            self._guarded(server, f"taking it from {host}", partial(self.evacuate, server, host))
        for host in decided.not_fenced:
            if host not in self._warned:
                self._warned.add(host)
                self.kube.event(
                    ObjectRef.to(hypervisors[host]),
                    "NotFenced",
                    f"host {host} is marked out of service but its agent is heartbeating: its "
                    "servers are left where they are until it is down",
                    warning=True,
                )
        self._warned &= set(decided.not_fenced)
        return decided

    def release_unbound(self, cluster: Cluster, in_flight: Callable[[str], bool]) -> int:
        """Remove the agents' finalizer from deleting Servers that no host holds and whose
        binding is not ``in_flight`` (a binding that lands first wins: its agent tears down).
        Returns how many were released."""
        released = 0
        for summary in cluster.stranded():
            if in_flight(summary.uid):
                continue  # its binding fails (the deletion changed it) or lands: next pass
            if self._guarded(summary, "releasing it", partial(self._release_unbound, summary)):
                released += 1
        return released

    def _release_unbound(self, summary: ServerSummary) -> bool:
        current = self.kube.get(Server, summary.name, summary.namespace)
        if (
            current is None
            or current.uid != summary.uid
            or not current.metadata.deleting
            or current.status.nodeName
            or constants.FINALIZER_DOMAIN not in current.metadata.finalizers
        ):
            return False
        meta = current.metadata
        index = meta.finalizers.index(constants.FINALIZER_DOMAIN)
        self.kube.json_patch(
            ObjectRef.to(current),
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resourceVersion},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )
        log.info("released %s: deleted before any host took it", current.full_name)
        return True

    def _guarded(self, server: ServerSummary, doing: str, fn: Callable[[], _T]) -> _T | None:
        """``fn()``; None when ``server`` changed or went meanwhile (404, 409, or 422 for a
        failed resourceVersion test): the next pass looks at it again."""
        try:
            return fn()
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                raise
            log.info("%s changed while %s; next pass", server.full_name, doing)
            return None

    def release(self, summary: ServerSummary, host: str) -> None:
        """Let a Server of a dead host be deleted: its agent cannot remove the finalizer."""
        current = self.kube.get(Server, summary.name, summary.namespace)
        if current is None or constants.FINALIZER_DOMAIN not in current.metadata.finalizers:
            return
        ref = ObjectRef.to(current)
        self.kube.remove_finalizer(ref, constants.FINALIZER_DOMAIN)
        self.kube.event(
            ref,
            RELEASED,
            f"released without its agent: host {host} is out of service; its domain and disks "
            f"may remain on {host} until its agent comes back, which removes them before it "
            "starts anything",
            warning=True,
        )
        log.warning("released %s from out-of-service host %s", current.full_name, host)

    def evacuate(self, summary: ServerSummary, host: str) -> None:
        """Take a Server away from a dead host; the scheduler binds it elsewhere next pass."""
        current = self.kube.get(Server, summary.name, summary.namespace)
        if current is None or current.metadata.deleting or current.status.nodeName != host:
            return
        ref = ObjectRef.to(current)
        generation = current.metadata.generation
        message = f"host {host} is out of service: rebuilding on another host"
        # Only Scheduled is the controller's; the dead agent's conditions (Ready, …) are
        # removed below, not taken over: an apply that later leaves out a condition item its
        # manager owned would strip that item's fields, leaving an invalid condition.
        conditions = [c for c in current.status.conditions if c.type == "Scheduled"]
        conditions = common.set_condition(
            conditions, "Scheduled", "False", EVACUATING, message, generation
        )
        # Take phase and the conditions over from the dead agent (force), conditional on the
        # version read: a Server that changed meanwhile is looked at again next pass.
        status = ServerStatus(phase=Phase.BUILD, conditions=conditions, evacuatedFrom=host)
        if current.status.image is not None:
            status.image = current.status.image  # rebuilt from the same bits, not by name
        out = self.kube.apply_status(
            ref,
            status,
            resource_version=current.metadata.resourceVersion,
            force=True,
        )
        # Then remove the binding and what the dead agent said: a "remove" leaves no owner, so
        # the scheduler's and the next agent's writes do not conflict with this one.
        written = out.get("status") or {}
        ops: list[dict[str, Any]] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": out["metadata"]["resourceVersion"],
            }
        ]
        ops += [{"op": "remove", "path": f"/status/{f}"} for f in RUNTIME_FIELDS if f in written]
        for index in reversed(range(len(written.get("conditions") or []))):
            kind = written["conditions"][index].get("type")
            if kind != "Scheduled":
                ops.append({"op": "remove", "path": f"/status/conditions/{index}"})
        self.kube.json_patch_status(ref, ops)
        lost = (
            f"unless its instances folder is shared, its disk on {host} is lost and it boots "
            f"from image {current.spec.imageRef} again"
        )
        self.kube.event(ref, EVACUATING, f"{message} with the same identity; {lost}", warning=True)
        log.warning("evacuating %s from out-of-service host %s", current.full_name, host)
