"""Marking hosts down (Nova's servicegroup): a Hypervisor whose heartbeat is older than the
grace period, or whose agent reports libvirt unreachable, gets ``Up=False`` with the reason and
an Event; it comes back ``Up=True`` on its next good heartbeat. The scheduler's ComputeFilter
skips hosts that are not up, whatever this condition says, so a missed write never sends a
Server to a dead host."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kubenova_api import common, constants, kube
from kubenova_operator.scheduling import hosts
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)


def check_hosts(
    hypervisors: Mapping[str, dict[str, Any]], cfg: ControllerSettings, k: kube.Kube
) -> list[tuple[str, bool]]:
    """Write ``Up`` where it changed; returns the (host, up) pairs written."""
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=cfg.heartbeat_grace_seconds)
    changed = []
    for name, hv in sorted(hypervisors.items()):
        status = hv.get("status") or {}
        state = hosts.host_state(
            name, hv.get("spec") or {}, status, hosts.Resources(), hosts.Ratios(), grace, now
        )
        current = common.get_condition(status.get("conditions"), "Up") or {}
        want: common.ConditionStatus = "True" if state.up else "False"
        if current.get("status") == want:
            continue
        reason = "HeartbeatFresh" if state.up else "HostDown"
        message = "the agent is heartbeating" if state.up else state.down_reason
        if not state.up and not current and status.get("lastHeartbeatTime") is None:
            continue  # a host that never reported is not "down", only not there yet
        ref = kube.ObjectRef("Hypervisor", constants.HYPERVISORS, name)
        conds = common.set_condition([current] if current else [], "Up", want, reason, message)
        k.apply_status(ref, {"conditions": conds})
        k.event(
            ref,
            "HostUp" if state.up else "HostDown",
            f"host {name}: {message}",
            warning=not state.up,
        )
        log.log(
            logging.INFO if state.up else logging.WARNING,
            "host %s is %s: %s",
            name,
            "up" if state.up else "down",
            message,
        )
        changed.append((name, state.up))
    return changed
