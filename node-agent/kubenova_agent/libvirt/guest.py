"""Acting on one guest (a libvirt domain) by the UUID kubenova gave it: the Server's UID.

The data types (State, StopReason, GuestInfo) are the driver contract's
(:mod:`kubenova_agent.driver`); they are re-exported here for callers of this layer."""

from __future__ import annotations

import logging

import libvirt

from kubenova_agent.driver import GuestInfo, State, StopReason
from kubenova_agent.libvirt import _conv, errors
from kubenova_agent.libvirt.host import Host

__all__ = ["GuestInfo", "Guests", "State", "StopReason"]

log = logging.getLogger(__name__)


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: State.running,
    libvirt.VIR_DOMAIN_BLOCKED: State.running,
    libvirt.VIR_DOMAIN_PAUSED: State.paused,
    libvirt.VIR_DOMAIN_SHUTDOWN: State.running,
    libvirt.VIR_DOMAIN_SHUTOFF: State.shutoff,
    libvirt.VIR_DOMAIN_CRASHED: State.crashed,
    libvirt.VIR_DOMAIN_PMSUSPENDED: State.paused,
}


_STOP_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: StopReason.never_started,
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: StopReason.shutdown,
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: StopReason.destroyed,
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: StopReason.crashed,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: StopReason.failed,
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: StopReason.saved,
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: StopReason.migrated,
}


class Guests:
    """Domain operations on one host (:class:`kubenova_agent.driver.Guests`)."""

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
                code, reason = dom.state()
                state = _STATES.get(code, State.other)
                stop_reason = None
                if state is State.shutoff and dom.hasManagedSaveImage(0):
                    state = State.suspended
                elif state in (State.shutoff, State.crashed):
                    stop_reason = _STOP_REASONS.get(reason, StopReason.other)
                    if code == libvirt.VIR_DOMAIN_CRASHED:
                        stop_reason = StopReason.crashed
                return GuestInfo(uuid, dom.name(), state, dom.XMLDesc(0), stop_reason)
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

    def destroy(self, uuid: str, force: bool = False) -> None:
        """Power the domain off at once (no-op when it is off or gone). Without ``force``
        QEMU gets SIGTERM and time to flush its disks first; with it, SIGKILL at once."""
        with _conv.translated():
            dom = self._lookup(uuid)
            if dom is None or not dom.isActive():
                return
            if force:
                dom.destroy()
                return
            try:
                dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return  # stopped meanwhile
                log.info("graceful destroy of %s failed (%s); forcing", uuid, exc)
                dom.destroy()

    def request_shutdown(self, uuid: str) -> bool:
        """Press the guest's ACPI power button and return at once (the waiting is the
        caller's: :mod:`kubenova_agent.softstop`); True when the guest is off already."""
        with _conv.translated():
            dom = self._require(uuid)
            if not dom.isActive():
                return True
            try:
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                if code in (
                    libvirt.VIR_ERR_INVALID_ARG,  # "unsupported flags": the test driver's answer
                    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                    libvirt.VIR_ERR_NO_SUPPORT,
                ):
                    # A driver without the ACPI flag (libvirt's test driver, the simulated
                    # hosts) shuts down its own way; retrying the flag can never work.
                    dom.shutdown()
                elif code != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
            return not dom.isActive()

    def pause(self, uuid: str) -> None:
        """Stop the vCPUs, keep the memory (Nova's pause)."""
        with _conv.translated():
            dom = self._require(uuid)
            if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()

    def unpause(self, uuid: str) -> None:
        with _conv.translated():
            dom = self._require(uuid)
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()

    def save(self, uuid: str) -> None:
        """Save the memory to disk and stop (Nova's suspend: libvirt managed save)."""
        with _conv.translated():
            dom = self._require(uuid)
            if dom.isActive():
                dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING)

    def discard_saved(self, uuid: str) -> None:
        """Drop a managed-save image, so the next start boots afresh."""
        with _conv.translated():
            dom = self._require(uuid)
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)

    def undefine(self, uuid: str) -> None:
        """Remove the domain's definition with its managed-save image and snapshots. A UEFI
        variable store is kept: it is a file of the storage pool, shared with another host
        after a move on shared storage; :meth:`Storage.delete_volumes` deletes it with the
        Server's disks."""
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
                | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM,
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
