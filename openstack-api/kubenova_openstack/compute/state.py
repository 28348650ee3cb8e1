"""A Server's Nova status, vm_state, task_state and power_state, from what it declares (spec)
and what its host reports (status).

The task state stays set until the Server has really converged: the host's agent has acted
on the current generation of the spec (``status.observedGeneration`` and its ``Converged``
condition), the phase is the one the spec asks for, a rebuild or reboot asked for has been
done, a rescue switched, a resize or move ended. So ``openstack server stop`` followed by ``server
show`` says ACTIVE / powering-off until the guest is off, then SHUTOFF / None — never SHUTOFF
while it still runs, and never None while the agent has not yet seen the request.

What the agent will not do is no task: an action it refused (``Converged`` False,
``ActionNotAllowed``, for this generation) and a guest that stopped by itself and stays off
by its restart policy (``Converged`` True for this generation, ``Ready`` False with the
guest's own reason) show the phase there is, with no task, as Nova shows an instance its
power sync found off. A Server no host can take is ERROR, as after Nova's NoValidHost
(:func:`unschedulable`).
"""

from __future__ import annotations

import dataclasses

from kubenova_api.common import Condition, get_condition
from kubenova_api.resources import Phase, PowerState, RebootType, Server

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
    PowerState.Running: Phase.ACTIVE,
    PowerState.Stopped: Phase.SHUTOFF,
    PowerState.Suspended: Phase.SUSPENDED,
    PowerState.Paused: Phase.PAUSED,
}
#: ``Ready`` reasons of a guest that went off by itself (the agent's StopReason values).
BY_GUEST = ("Shutdown", "Crashed", "Failed")


@dataclasses.dataclass(frozen=True)
class NovaState:
    status: str
    vm_state: str
    task_state: str | None
    power_state: int


def of(server: Server, verify_resize: bool = False) -> NovaState:
    """The Nova state of ``server``; ``verify_resize`` when a finished resize or cold
    migration waits for its confirmation."""
    status = server.status
    phase = status.phase or Phase.BUILD
    power = POWER.get(status.powerState or "", NOSTATE)
    if server.metadata.deleting:
        return NovaState(no_task_status(phase), VM_STATES.get(phase, "active"), "deleting", power)
    if phase is Phase.ERROR:
        return NovaState("ERROR", "error", None, power)
    if not status.nodeName:
        if unschedulable(server) is not None:
            return NovaState("ERROR", "error", None, NOSTATE)
        return NovaState("BUILD", "building", "scheduling", NOSTATE)
    if phase is Phase.BUILD:
        return NovaState("BUILD", "building", "spawning", power)
    if phase is Phase.MIGRATING:
        return NovaState("MIGRATING", "active", "migrating", power)
    if verify_resize:
        return NovaState("VERIFY_RESIZE", "resized", None, power)
    task = pending_task(server)
    shown = no_task_status(phase)
    if task == "rebuilding":
        shown = "REBUILD"
    elif task == "rebooting":
        shown = "REBOOT"
    elif task == "rebooting_hard":
        shown = "HARD_REBOOT"
    elif task == "resize_prep":
        shown = "RESIZE"
    return NovaState(shown, VM_STATES.get(phase, "active"), task, power)


def no_task_status(phase: Phase) -> str:
    """The Nova status of a Server in ``phase`` with no task under way."""
    return "ACTIVE" if phase is Phase.DELETING else phase.value


def _for_this_generation(cond: Condition | None, server: Server) -> bool:
    return cond is not None and cond.observedGeneration == server.metadata.generation


def pending_task(server: Server) -> str | None:
    """The Nova task under way for a bound Server: what the spec asks for that its host has
    not done yet (None when there is nothing, or nothing the host will do)."""
    spec, status = server.spec, server.status
    phase = status.phase or Phase.BUILD
    converged = get_condition(status.conditions, "Converged")
    if (
        _for_this_generation(converged, server)
        and converged is not None
        and converged.status == "False"
        and converged.reason == "ActionNotAllowed"
    ):
        return None  # the agent will not try; the phase is what there is
    rebuild = spec.rebuildRequestedAt
    if rebuild is not None and rebuild != status.observedRebuildRequestedAt:
        return "rebuilding"
    asked = spec.rebootRequestedAt
    if asked is not None and asked != status.observedRebootRequestedAt:
        return "rebooting_hard" if spec.rebootType is RebootType.Hard else "rebooting"
    rescue = spec.rescue is not None
    if rescue and phase is not Phase.RESCUE:
        return "rescuing"
    if not rescue and phase is Phase.RESCUE:
        return "unrescuing"
    if status.flavor is not None and status.flavor.name not in (None, spec.flavorRef):
        # A new flavorRef: the controller resizes it once stopped (the facade stops it).
        return "resize_prep"
    if rescue:
        return None
    want = WANTED_PHASE[spec.powerState]
    seen = (status.observedGeneration or 0) >= server.metadata.generation
    if want is phase:
        return None
    if (
        want is Phase.ACTIVE
        and phase is Phase.SHUTOFF
        and seen
        and _for_this_generation(converged, server)
        and _ready_reason(server) in BY_GUEST
    ):
        return None  # off by itself, and its restart policy keeps it off
    if want is Phase.SHUTOFF:
        return "powering-off"
    if want is Phase.SUSPENDED:
        return "suspending"
    if want is Phase.PAUSED:
        return "pausing"
    # want ACTIVE
    return {
        Phase.SHUTOFF: "powering-on",
        Phase.SUSPENDED: "resuming",
        Phase.PAUSED: "unpausing",
    }.get(phase, "powering-on")


def _ready_reason(server: Server) -> str | None:
    ready = get_condition(server.status.conditions, "Ready")
    return ready.reason if ready is not None else None


def stays_off(server: Server) -> bool:
    """A guest that went off by itself while declared Running, and stays off (its restart
    policy): ``os-start`` must ask the agent for a start, as a hard reboot does."""
    return (
        server.spec.powerState is PowerState.Running
        and server.status.phase is Phase.SHUTOFF
        and pending_task(server) is None
    )


def unschedulable(server: Server) -> Condition | None:
    """The ``Scheduled`` condition of a Server that cannot be bound as it is (no host passes
    the filters, its Flavor, Image, group or network is not there, the quota is spent: the
    controller's ``Stalled=True`` for this generation), else None.

    Nova gives up there (NoValidHost: ERROR, with the reason as the fault); the controller
    keeps trying (room may appear, a missing Flavor may be made). The facade shows what Nova
    would, so that a client waiting for ACTIVE (``server create --wait``, Terraform, Ansible)
    stops with the reason instead of waiting in BUILD for ever; if the Server is bound later
    after all, it goes on to BUILD and ACTIVE."""
    conds = server.status.conditions
    stalled, scheduled = get_condition(conds, "Stalled"), get_condition(conds, "Scheduled")
    if (
        server.status.nodeName
        or stalled is None
        or stalled.status != "True"
        or not _for_this_generation(stalled, server)
        or scheduled is None
        or scheduled.status != "False"
    ):
        return None
    return scheduled


def fault(server: Server) -> tuple[str, str, str | None] | None:
    """(message, details, when) of a Server in ERROR: the condition that says why."""
    cond = unschedulable(server) or _error_condition(server)
    if cond is None:
        return None
    when = cond.lastTransitionTime
    return (
        f"{cond.reason}: {cond.message}",
        str(cond.message or ""),
        when.isoformat() if when is not None else None,
    )


def _error_condition(server: Server) -> Condition | None:
    """The first of ``Ready`` and ``Scheduled`` that is False, of a Server in phase ERROR."""
    status = server.status
    if status.phase is not Phase.ERROR:
        return None
    for type_ in ("Ready", "Scheduled"):
        cond = get_condition(status.conditions, type_)
        if cond is not None and cond.status == "False":
            return cond
    return None
