"""Acting on one guest (a libvirt domain) by the UUID kubenova gave it: the Server's UID."""

from __future__ import annotations

import dataclasses
import enum
import logging

import libvirt

from kubenova_agent.libvirt import _conv, errors
from kubenova_agent.libvirt.host import Host

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    """A domain's state, in the agent's words."""

    running = "Running"
    paused = "Paused"
    shutoff = "Shutoff"
    crashed = "Crashed"
    suspended = "Suspended"  # shut off with a managed-save image (Nova's suspend)
    other = "Other"


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: State.running,
    libvirt.VIR_DOMAIN_BLOCKED: State.running,
    libvirt.VIR_DOMAIN_PAUSED: State.paused,
    libvirt.VIR_DOMAIN_SHUTDOWN: State.running,
    libvirt.VIR_DOMAIN_SHUTOFF: State.shutoff,
    libvirt.VIR_DOMAIN_CRASHED: State.crashed,
    libvirt.VIR_DOMAIN_PMSUSPENDED: State.paused,
}


@dataclasses.dataclass(frozen=True)
class GuestInfo:
    uuid: str
    name: str
    state: State
    xml: str


class Guests:
    """Domain operations on one host. Every method is safe to repeat."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def _lookup(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self._host.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def get(self, uuid: str) -> GuestInfo | None:
        """The guest with that UUID, or None when the host has no such domain."""
        with _conv.translated():
            dom = self._lookup(uuid)
            if dom is None:
                return None
            try:
                code = dom.state()[0]
                state = _STATES.get(code, State.other)
                if state is State.shutoff and dom.hasManagedSaveImage(0):
                    state = State.suspended
                return GuestInfo(uuid, dom.name(), state, dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

    def define(self, xml: str) -> None:
        """Define (or redefine) a persistent domain from its XML."""
        with _conv.translated():
            self._host.conn.defineXML(xml)

    def _require(self, uuid: str) -> libvirt.virDomain:
        dom = self._lookup(uuid)
        if dom is None:
            raise errors.DomainNotFound(f"no domain with UUID {uuid}")
        return dom

    def start(self, uuid: str) -> None:
        """Start the domain unless it runs already."""
        with _conv.translated():
            dom = self._require(uuid)
            if not dom.isActive():
                dom.create()

    def destroy(self, uuid: str) -> None:
        """Power the domain off at once (no-op when it is off or gone)."""
        with _conv.translated():
            dom = self._lookup(uuid)
            if dom is None or not dom.isActive():
                return
            try:
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return  # stopped meanwhile
                log.info("graceful destroy of %s failed (%s); forcing", uuid, exc)
                dom.destroy()

    def undefine(self, uuid: str) -> None:
        """Remove the domain's definition with its managed-save image, snapshots and NVRAM."""
        with _conv.translated():
            dom = self._lookup(uuid)
            if dom is None:
                return
            base = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
            # Drivers refuse flags they do not know (the test driver: checkpoints, NVRAM);
            # try the fullest clean-up first and fall back to what the driver supports.
            attempts = (
                base
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
                base | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
                base,
            )
            for i, flags in enumerate(attempts):
                try:
                    dom.undefineFlags(flags)
                    return
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return
                    unsupported = exc.get_error_code() in (
                        libvirt.VIR_ERR_INVALID_ARG,
                        libvirt.VIR_ERR_NO_SUPPORT,
                        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                    )
                    if not unsupported or i == len(attempts) - 1:
                        raise
