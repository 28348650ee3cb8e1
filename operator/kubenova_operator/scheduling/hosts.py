"""A host as the scheduler sees it, built from a Hypervisor object and the claims on it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from kubenova_api import common


@dataclasses.dataclass(frozen=True)
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

    @classmethod
    def from_api(cls, data: dict[str, Any] | None) -> Resources:
        data = data or {}
        return cls(
            int(data.get("vcpus", 0)), int(data.get("memoryMiB", 0)), int(data.get("diskGiB", 0))
        )

    def to_api(self) -> dict[str, int]:
        return {"vcpus": self.vcpus, "memoryMiB": self.memory_mib, "diskGiB": self.disk_gib}


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

    @property
    def capacity(self) -> Resources:
        """What may be claimed in all: (total - reserved) x ratio, as placement computes it."""
        return Resources(
            int((self.total.vcpus - self.reserved.vcpus) * self.ratios.cpu),
            int((self.total.memory_mib - self.reserved.memory_mib) * self.ratios.ram),
            int((self.total.disk_gib - self.reserved.disk_gib) * self.ratios.disk),
        )

    @property
    def free(self) -> Resources:
        cap = self.capacity
        return Resources(
            cap.vcpus - self.claimed.vcpus,
            cap.memory_mib - self.claimed.memory_mib,
            cap.disk_gib - self.claimed.disk_gib,
        )


def host_state(
    name: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    claimed: Resources,
    defaults: Ratios,
    grace: dt.timedelta,
    now: dt.datetime,
) -> HostState:
    """The scheduler's view of one Hypervisor."""
    beat = common.parse_time(status.get("lastHeartbeatTime"))
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if beat is None:
        up, why = False, "no heartbeat yet"
    elif now - beat > grace:
        up, why = False, f"last heartbeat {int((now - beat).total_seconds())}s ago"
    elif ready is None or ready.get("status") != "True":
        up, why = False, (ready or {}).get("message", "not ready")
    else:
        up, why = True, ""
    return HostState(
        name=name,
        up=up,
        down_reason=why,
        disabled=bool(spec.get("disabled", False) or spec.get("evacuate", False)),
        zone=str(spec.get("availabilityZone") or "nova"),
        total=Resources.from_api(status.get("total")),
        reserved=Resources.from_api(status.get("reserved")),
        ratios=Ratios(
            cpu=float(spec.get("cpuAllocationRatio") or defaults.cpu),
            ram=float(spec.get("ramAllocationRatio") or defaults.ram),
            disk=float(spec.get("diskAllocationRatio") or defaults.disk),
        ),
        claimed=claimed,
        archs=tuple(status.get("guestArchitectures") or ()),
        virt_type=str(status.get("virtType") or ""),
    )
