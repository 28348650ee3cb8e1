"""Nova's filter scheduler in small: filters drop hosts that cannot take the Server, weighers
rank the rest, ties break by name. A refusal says which filter rejected how many hosts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from kubenova_operator.scheduling.hosts import HostState, Resources


@dataclasses.dataclass(frozen=True)
class Request:
    """What one Server needs of a host."""

    resources: Resources
    zone: str | None = None
    host_name: str | None = None
    arch: str = "x86_64"


@dataclasses.dataclass(frozen=True)
class Decision:
    host: str


@dataclasses.dataclass(frozen=True)
class NoValidHost:
    rejections: tuple[tuple[str, int], ...]
    hosts: int

    @property
    def message(self) -> str:
        if self.hosts == 0:
            return "No valid host was found: no Hypervisor is registered"
        parts = ", ".join(f"{name} rejected {n}" for name, n in self.rejections)
        return f"No valid host was found among {self.hosts} hosts: {parts}"


Filter = Callable[[HostState, Request], bool]


def compute_filter(host: HostState, _req: Request) -> bool:
    """The host is up (fresh heartbeat, libvirt reachable) and not disabled."""
    return host.up and not host.disabled


def availability_zone_filter(host: HostState, req: Request) -> bool:
    return req.zone is None or host.zone == req.zone


def host_name_filter(host: HostState, req: Request) -> bool:
    return req.host_name is None or host.name == req.host_name


def architecture_filter(host: HostState, req: Request) -> bool:
    """The host can run guests of the image's architecture."""
    return req.arch in host.archs


def vcpu_filter(host: HostState, req: Request) -> bool:
    return host.free.vcpus >= req.resources.vcpus


def ram_filter(host: HostState, req: Request) -> bool:
    return host.free.memory_mib >= req.resources.memory_mib


def disk_filter(host: HostState, req: Request) -> bool:
    return host.free.disk_gib >= req.resources.disk_gib


FILTERS: tuple[tuple[str, Filter], ...] = (
    ("ComputeFilter", compute_filter),
    ("HostNameFilter", host_name_filter),
    ("AvailabilityZoneFilter", availability_zone_filter),
    ("ImagePropertiesFilter", architecture_filter),
    ("VCPUFilter", vcpu_filter),
    ("RamFilter", ram_filter),
    ("DiskFilter", disk_filter),
)


def ram_weight(host: HostState) -> float:
    """Free memory after the claim (spread)."""
    return float(host.free.memory_mib)


def pick_host(req: Request, hosts: Sequence[HostState]) -> Decision | NoValidHost:
    """The best host for ``req``, or why there is none."""
    candidates = list(hosts)
    rejections: list[tuple[str, int]] = []
    for name, keep in FILTERS:
        passed = [h for h in candidates if keep(h, req)]
        if len(passed) < len(candidates):
            rejections.append((name, len(candidates) - len(passed)))
        candidates = passed
        if not candidates:
            return NoValidHost(tuple(rejections), len(hosts))
    best = max(candidates, key=lambda h: (ram_weight(h), _name_key(h.name)))
    return Decision(best.name)


def _name_key(name: str) -> tuple[int, ...]:
    # Deterministic tie-break favouring the alphabetically first host under max().
    return tuple(-ord(c) for c in name)
