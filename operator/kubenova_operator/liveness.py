"""Marking hosts down (Nova's servicegroup): a Hypervisor whose heartbeat is older than the
grace period, or whose agent reports libvirt unreachable, gets ``Up=False`` with the reason and
an Event; it comes back ``Up=True`` on its next good heartbeat. The scheduler's ComputeFilter
skips hosts that are not up, whatever this condition says, so a missed write never sends a
Server to a dead host."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

from kubenova_api import common, constants, kube
from kubenova_api.common import ConditionStatus
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import Hypervisor, HypervisorStatus
from kubenova_operator.scheduling import hosts
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)


def check_hosts(
    hypervisors: Mapping[str, Hypervisor],
    cfg: ControllerSettings,
    k: kube.Kube,
    heartbeats: Mapping[str, dt.datetime] | None = None,
) -> list[tuple[str, bool]]:
    """Write ``Up`` where it changed, with kstatus's ``Stalled`` (True while the host is down:
    what Flux and Argo CD show as Failed) and ``observedGeneration`` (an admin's edit of the
    spec is acted on in the controller's next pass, which records it here); returns the
    (host, up) pairs whose ``Up`` changed."""
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=cfg.heartbeat_grace_seconds)
    changed = []
    renewed = heartbeats or {}
    for name, hv in sorted(hypervisors.items()):
        lease = renewed.get(name)
        up, why = hosts.liveness(hv, grace, now, lease)
        current = common.get_condition(hv.status.conditions, "Up")
        want: ConditionStatus = "True" if up else "False"
        generation = hv.metadata.generation
        flipped = current is None or current.status != want
        if not flipped and hv.status.observedGeneration == generation:
            continue
        if (
            not up
            and current is None
            and hosts.last_heartbeat(hv.status.lastHeartbeatTime, lease) is None
        ):
            continue  # a host that never reported is not "down", only not there yet
        reason = "HeartbeatFresh" if up else "HostDown"
        message = "the agent is heartbeating" if up else why
        if not up and lease is None and cfg.heartbeat_namespace and heartbeats is not None:
            # Says where to look when the agents' Leases are somewhere this controller is not
            # watching (a different namespace).
            message += (
                f"; no heartbeat Lease {cfg.heartbeat_namespace}/"
                f"{constants.heartbeat_lease(name)} seen"
            )
        if not flipped and current is not None:
            reason, message = current.reason, current.message
        ref = ObjectRef.to(hv)
        own = [c for c in hv.status.conditions if c.type in ("Up", "Stalled")]
        conditions = common.set_condition(own, "Up", want, reason, message, generation)
        stalled: tuple[ConditionStatus, str, str] = (
            ("False", reason, "") if up else ("True", reason, f"host {name}: {message}")
        )
        conditions = common.set_condition(conditions, "Stalled", *stalled, generation)
        k.apply_status(ref, HypervisorStatus(conditions=conditions, observedGeneration=generation))
        if not flipped:
            continue
        k.event(
            ref,
            "HostUp" if up else "HostDown",
            f"host {name}: {message}",
            warning=not up,
        )
        log.log(
            logging.INFO if up else logging.WARNING,
            "host %s is %s: %s",
            name,
            "up" if up else "down",
            message,
        )
        changed.append((name, up))
    return changed
