"""What the agent needs of a hypervisor host: a small, typed contract (Nova's
``nova/virt/driver.py``, without its 13,900-line implementation behind one class).

:mod:`kubenova_agent.libvirt` implements it with libvirt; the unit tests implement it with plain
data (``tests/fakes.py``) to check the agent's decisions in milliseconds. Everything here is
plain data or a Protocol: nothing imports libvirt.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Protocol

# ----------------------------------------------------------------------------- guests


class State(enum.StrEnum):
    """A domain's state, in the agent's words."""

    running = "Running"
    paused = "Paused"
    shutoff = "Shutoff"
    crashed = "Crashed"
    suspended = "Suspended"  # shut off with a managed-save image (Nova's suspend)
    other = "Other"


class StopReason(enum.StrEnum):
    """Why a shut-off domain is off (libvirt's VIR_DOMAIN_SHUTOFF_* reasons)."""

    never_started = "NeverStarted"
    shutdown = "GuestShutdown"  # the guest powered itself off
    destroyed = "Destroyed"  # powered off from outside (kubenova or an admin)
    crashed = "GuestCrashed"
    failed = "Failed"  # QEMU failed or was killed
    saved = "Saved"
    migrated = "Migrated"  # it left for another host
    other = "Other"


@dataclasses.dataclass(frozen=True)
class GuestInfo:
    uuid: str
    name: str
    state: State
    xml: str
    stop_reason: StopReason | None = None

    @property
    def alive(self) -> bool:
        """Running or paused: it holds memory on this host."""
        return self.state in (State.running, State.paused)


class Guests(Protocol):
    """Domain operations on one host, by UUID (the Server's UID). Every method is safe to
    repeat; failures raise :class:`kubenova_agent.libvirt.errors.HypervisorError`."""

    def get(self, uuid: str) -> GuestInfo | None: ...
    def define(self, xml: str) -> None: ...
    def start(self, uuid: str) -> None: ...
    def destroy(self, uuid: str, force: bool = False) -> None: ...
    def request_shutdown(self, uuid: str) -> bool: ...
    def pause(self, uuid: str) -> None: ...
    def unpause(self, uuid: str) -> None: ...
    def save(self, uuid: str) -> None: ...
    def discard_saved(self, uuid: str) -> None: ...
    def undefine(self, uuid: str) -> None: ...


class CpuReason(enum.StrEnum):
    """Why this host cannot give a guest the CPU it asks for."""

    unknown_model = "CPUModelUnknown"
    """libvirt on this host does not know the model."""
    unusable_model = "CPUModelUnusable"
    """The model is known, but this host cannot provide all of its features."""
    unsupported_mode = "CPUModeUnsupported"
    """The mode (host-passthrough, host-model, …) is not available for this virt type."""


@dataclasses.dataclass(frozen=True)
class CpuRefusal:
    reason: CpuReason
    message: str


class CpuChecks(Protocol):
    """Whether this host can run a guest CPU (``<cpu>`` XML) before the domain is defined."""

    def check(self, cpu_xml: str | None, arch: str, virt_type: str) -> CpuRefusal | None: ...


# ----------------------------------------------------------------------------- storage


@dataclasses.dataclass(frozen=True)
class PoolUsage:
    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int


@dataclasses.dataclass(frozen=True)
class Backing:
    path: str
    format: str  # qcow2 | raw


class Storage(Protocol):
    """The guests' disks: volumes of one storage pool, named after the Server's UID."""

    pool_name: str

    def ensure_pool(self) -> None: ...
    def usage(self) -> PoolUsage: ...
    def ensure_volume(self, name: str, capacity_bytes: int, backing: Backing | None) -> str: ...
    def ensure_file_volume(self, name: str, write: Callable[[str], None]) -> str: ...
    def volumes(self, prefix: str) -> list[tuple[str, int]]: ...
    def grow_volume(self, name: str, capacity_bytes: int) -> bool: ...
    def delete_volumes(self, prefix: str) -> list[str]: ...
    def backing_files(self) -> list[str]: ...


# ----------------------------------------------------------------------------- migrations


@dataclasses.dataclass(frozen=True)
class Options:
    """How to migrate one guest."""

    dest_uri: str
    """The target's libvirtd, as the source libvirtd reaches it."""
    address: str
    """The target address the migration stream (and the disk copy) goes to."""
    block: bool
    """Copy the disks (not shared between the hosts): ``NON_SHARED_INC``, the image layer below
    the overlay is on the target already."""
    bandwidth_mibps: int = 0
    auto_converge: bool = False
    post_copy: bool = False


@dataclasses.dataclass(frozen=True)
class JobStats:
    """A migration job's figures (libvirt's ``virDomainGetJobStats``)."""

    data_total: int = 0
    data_processed: int = 0
    data_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    memory_iterations: int = 0
    elapsed_ms: int = 0
    downtime_ms: int | None = None

    @classmethod
    def of(cls, raw: dict[str, int]) -> JobStats:
        downtime = raw.get("downtime")
        return cls(
            data_total=int(raw.get("data_total", 0)),
            data_processed=int(raw.get("data_processed", 0)),
            data_remaining=int(raw.get("data_remaining", 0)),
            disk_total=int(raw.get("disk_total", 0)),
            disk_processed=int(raw.get("disk_processed", 0)),
            memory_iterations=int(raw.get("memory_iteration", 0)),
            elapsed_ms=int(raw.get("time_elapsed", 0)),
            downtime_ms=int(downtime) if downtime is not None else None,
        )


class Migrations(Protocol):
    """Moving guests between hosts, and the CPU questions that decide whether they can."""

    def guest_cpu(self, uuid: str) -> tuple[str | None, str]: ...
    def compare_cpu(self, cpu_xml: str, arch: str, virt_type: str) -> tuple[bool, str]: ...
    def host_model_cpu(self, virt_type: str, arch: str = "x86_64") -> str | None: ...
    def baseline(self, cpus: list[str], virt_type: str, arch: str = "x86_64") -> str: ...
    def migrate(self, uuid: str, opts: Options) -> None: ...
    def copy_volume(
        self,
        pool_name: str,
        name: str,
        dest_uri: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int: ...
    def stats(self, uuid: str) -> JobStats | None: ...
    def completed_stats(self, uuid: str) -> JobStats | None: ...
    def abort(self, uuid: str) -> bool: ...
    def start_post_copy(self, uuid: str) -> None: ...
    def arrived(self, uuid: str) -> bool: ...
    def migrated_away(self, uuid: str) -> bool: ...
    def peer_running(self, uri: str, uuid: str) -> bool | None: ...
