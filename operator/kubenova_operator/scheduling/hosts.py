"""A host as the scheduler sees it, built from a Hypervisor object and the claims on it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import threading
from collections.abc import Mapping

from kubenova_api import common, resources
from kubenova_api.resources import Hypervisor


@dataclasses.dataclass(frozen=True, slots=True)
class Resources:
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.vcpus + other.vcpus,
            self.memory_mib + other.memory_mib,
            self.disk_gib + other.disk_gib,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.vcpus - other.vcpus,
            self.memory_mib - other.memory_mib,
            self.disk_gib - other.disk_gib,
        )

    @classmethod
    def of(cls, size: resources.Resources | resources.FlavorSnapshot | None) -> Resources:
        """The scheduler's figures of an API size (a flavor snapshot, a capacity)."""
        if size is None:
            return cls()
        return cls(size.vcpus, size.memoryMiB, size.diskGiB)

    def snapshot(self, flavor_name: str | None) -> resources.FlavorSnapshot:
        """The Server's ``status.flavor`` for this size."""
        return resources.FlavorSnapshot(
            name=flavor_name, vcpus=self.vcpus, memoryMiB=self.memory_mib, diskGiB=self.disk_gib
        )


@dataclasses.dataclass(frozen=True)
class Ratios:
    """Allocation ratios (Nova's defaults: CPU 4.0, RAM 1.0, disk 1.0)."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0


@dataclasses.dataclass(frozen=True)
class HostState:
    name: str
    up: bool
    down_reason: str
    disabled: bool
    zone: str
    total: Resources
    reserved: Resources
    ratios: Ratios
    claimed: Resources
    archs: tuple[str, ...] = ("x86_64",)
    virt_type: str = ""
    physnets: frozenset[str] = frozenset()
    """Physical networks the host maps (provider networks it can carry)."""
    tunnel: bool = False
    """It has a tunnel endpoint (it can carry tenant networks)."""
    firmwares: tuple[str, ...] = ("bios",)
    machine_types: tuple[str, ...] = ()

    # Computed once per state (a state is immutable; a binding makes a new one): every filter
    # and weigher reads them for every host of every decision.
    @functools.cached_property
    def capacity(self) -> Resources:
        """What may be claimed in all: (total - reserved) x ratio, as placement computes it."""
        return Resources(
            int((self.total.vcpus - self.reserved.vcpus) * self.ratios.cpu),
            int((self.total.memory_mib - self.reserved.memory_mib) * self.ratios.ram),
            int((self.total.disk_gib - self.reserved.disk_gib) * self.ratios.disk),
        )

    @functools.cached_property
    def free(self) -> Resources:
        return self.capacity - self.claimed


def last_heartbeat(*times: dt.datetime | None) -> dt.datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def liveness(
    hv: Hypervisor, grace: dt.timedelta, now: dt.datetime, renewed: dt.datetime | None = None
) -> tuple[bool, str]:
    """Whether the host is up and, if not, why: its heartbeat (the later of its Lease's
    ``renewed`` and its status's own time) is within ``grace`` and its agent says Ready."""
    status = hv.status
    beat = last_heartbeat(status.lastHeartbeatTime, renewed)
    if beat is None:
        return False, "no heartbeat yet"
    if now - beat > grace:
        return False, f"last heartbeat {int((now - beat).total_seconds())}s ago"
    ready = common.get_condition(status.conditions, "Ready")
    if ready is None or ready.status != "True":
        return False, ready.message if ready is not None else "not ready"
    return True, ""


def host_state(
    hv: Hypervisor,
    claimed: Resources,
    defaults: Ratios,
    grace: dt.timedelta,
    now: dt.datetime,
    renewed: dt.datetime | None = None,
) -> HostState:
    """The scheduler's view of one Hypervisor; its heartbeat is the later of its Lease's
    ``renewed`` and its status's own time."""
    up, why = liveness(hv, grace, now, renewed)
    return _state(hv, claimed, defaults, up, why)


def _state(hv: Hypervisor, claimed: Resources, defaults: Ratios, up: bool, why: str) -> HostState:
    spec, status = hv.spec, hv.status
    return HostState(
        name=hv.name,
        up=up,
        down_reason=why,
        disabled=spec.disabled or spec.evacuate or spec.outOfService,
        zone=spec.availabilityZone or "nova",
        total=Resources.of(status.total),
        reserved=Resources.of(status.reserved),
        ratios=Ratios(
            cpu=spec.cpuAllocationRatio or defaults.cpu,
            ram=spec.ramAllocationRatio or defaults.ram,
            disk=spec.diskAllocationRatio or defaults.disk,
        ),
        claimed=claimed,
        archs=tuple(status.guestArchitectures),
        virt_type=status.virtType or "",
        physnets=frozenset(status.network.physicalNetworks) if status.network else frozenset(),
        tunnel=bool(status.network and status.network.tunnelAddress),
        firmwares=tuple(status.firmwares) or ("bios",),  # an agent that says nothing: BIOS
        machine_types=tuple(status.machineTypes),
    )


class StateCache:
    """Host states kept from one pass to the next: a host's state is made again only when its
    Hypervisor (a new object: the indexes parse one per event), its claims or its liveness
    changed. Each pass used to
    make every host's state anew, twice: at 1,000 hosts that was a quarter of the
    controller's time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[tuple[object, ...], Hypervisor, HostState]] = {}

    def states(
        self,
        hypervisors: Mapping[str, Hypervisor],
        claimed: Mapping[str, Resources],
        defaults: Ratios,
        grace: dt.timedelta,
        now: dt.datetime,
        renewed: Mapping[str, dt.datetime],
    ) -> dict[str, HostState]:
        """Every host's state now, by name (sorted)."""
        out: dict[str, HostState] = {}
        kept: dict[str, tuple[tuple[object, ...], Hypervisor, HostState]] = {}
        zero = Resources()
        with self._lock:
            before = self._states
            for name, hv in sorted(hypervisors.items()):
                up, why = liveness(hv, grace, now, renewed.get(name))
                size = claimed.get(name, zero)
                key = (size, up, why, defaults)
                hit = before.get(name)
                if hit is not None and hit[1] is hv and hit[0] == key:
                    state = hit[2]
                else:
                    state = _state(hv, size, defaults, up, why)
                kept[name] = (key, hv, state)
                out[name] = state
            self._states = kept
        return out
