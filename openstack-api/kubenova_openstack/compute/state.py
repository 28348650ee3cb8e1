"""A Server's Nova status, vm_state, task_state and power_state, from what it declares (spec)
and what its host reports (status).

The task state stays set until the Server has really converged: the agent has seen the
current generation, the phase is the one the spec asks for, a reboot asked for has been done,
a move has ended. So ``openstack server stop`` followed by ``server show`` says ACTIVE /
powering-off until the guest is off, then SHUTOFF / None — never SHUTOFF while it still runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Nova's power_state numbers.
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7
POWER = {
    "Running": RUNNING,
    "Paused": PAUSED,
    "Shutoff": SHUTDOWN,
    "Crashed": CRASHED,
    "Suspended": SUSPENDED,
}
VM_STATES = {
    "BUILD": "building",
    "ACTIVE": "active",
    "SHUTOFF": "stopped",
    "SUSPENDED": "suspended",
    "PAUSED": "paused",
    "RESCUE": "rescued",
    "ERROR": "error",
    "MIGRATING": "active",
    "DELETING": "active",
    "VERIFY_RESIZE": "resized",
}
WANTED_PHASE = {
    "Running": "ACTIVE",
    "Stopped": "SHUTOFF",
    "Suspended": "SUSPENDED",
    "Paused": "PAUSED",
}


@dataclasses.dataclass(frozen=True)
class NovaState:
    status: str
    vm_state: str
    task_state: str | None
    power_state: int


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def of(server: dict[str, Any], verify_resize: bool = False) -> NovaState:
    """The Nova state of ``server``; ``verify_resize`` when a finished resize or cold
    migration waits for its confirmation."""
    meta = server["metadata"]
    status = server.get("status") or {}
    phase = str(status.get("phase") or "BUILD")
    power = POWER.get(str(status.get("powerState") or ""), NOSTATE)
    if meta.get("deletionTimestamp"):
        return NovaState(_shown(phase), VM_STATES.get(phase, "active"), "deleting", power)
    if phase == "ERROR":
        return NovaState("ERROR", "error", None, power)
    if not status.get("nodeName"):
        # Not bound yet. Where Nova gives up (NoValidHost → ERROR), kubenova keeps trying
        # (room may appear, a missing Flavor may be made): BUILD / scheduling, the reason in
        # the Server's Scheduled condition.
        return NovaState("BUILD", "building", "scheduling", NOSTATE)
    if phase == "BUILD":
        return NovaState("BUILD", "building", "spawning", power)
    if phase == "MIGRATING":
        return NovaState("MIGRATING", "active", "migrating", power)
    if verify_resize:
        return NovaState("VERIFY_RESIZE", "resized", None, power)
    task = _pending_task(server, phase)
    shown = _shown(phase)
    if task == "rebooting":
        shown = "REBOOT"
    elif task == "rebooting_hard":
        shown = "HARD_REBOOT"
    return NovaState(shown, VM_STATES.get(phase, "active"), task, power)


def _shown(phase: str) -> str:
    return "ACTIVE" if phase in ("DELETING",) else phase


def _pending_task(server: dict[str, Any], phase: str) -> str | None:
    """The Nova task under way: what the spec asks for that the host has not done yet."""
    meta, spec = server["metadata"], server.get("spec") or {}
    status = server.get("status") or {}
    converged = _condition(status, "Converged")
    refused = converged.get("reason") == "ActionNotAllowed" and converged.get(
        "observedGeneration"
    ) == meta.get("generation")
    if refused:
        return None  # the agent will not try; the phase is what there is
    asked = spec.get("rebootRequestedAt")
    if asked and asked != status.get("observedRebootRequestedAt"):
        return "rebooting_hard" if spec.get("rebootType") == "Hard" else "rebooting"
    rescue = spec.get("rescue") is not None
    if rescue and phase != "RESCUE":
        return "rescuing"
    if not rescue and phase == "RESCUE":
        return "unrescuing"
    if rescue:
        return None
    want = WANTED_PHASE.get(str(spec.get("powerState") or "Running"), "ACTIVE")
    if want == phase:
        return None
    if want == "SHUTOFF":
        return "powering-off"
    if want == "SUSPENDED":
        return "suspending"
    if want == "PAUSED":
        return "pausing"
    # want ACTIVE
    return {"SHUTOFF": "powering-on", "SUSPENDED": "resuming", "PAUSED": "unpausing"}.get(
        phase, "powering-on"
    )


def fault(server: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(message, details, when) of a Server in ERROR: the condition that says why."""
    status = server.get("status") or {}
    for type_ in ("Ready", "Scheduled"):
        cond = _condition(status, type_)
        if cond.get("status") == "False" and status.get("phase") == "ERROR":
            return (
                f"{cond.get('reason')}: {cond.get('message')}",
                str(cond.get("message") or ""),
                cond.get("lastTransitionTime"),
            )
    return None
