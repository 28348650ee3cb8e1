"""Nova's filter scheduler in small: filters drop hosts that cannot take the Server, weighers
rank the rest, ties break by name. A refusal says which filter rejected how many hosts."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

from kubenova_operator.scheduling.hosts import HostState, Resources


@dataclasses.dataclass(frozen=True)
class Request:
    """What one Server needs of a host."""

    resources: Resources
    zone: str | None = None
    host_name: str | None = None
    arch: str = "x86_64"
    virt_type: str | None = None
    firmware: str | None = None
    """uefi or uefi-secure-boot when the image needs it (BIOS: any host)."""
    machine_type: str | None = None
    """The image's hw_machine_type, when it names one."""
    group_policy: str | None = None
    group_hosts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """How many members of the Server's group each host already has."""
    ignore_hosts: frozenset[str] = frozenset()
    """Hosts that must not be picked (a migration's source)."""
    physnets: frozenset[str] = frozenset()
    """Physical networks the host must map (the Server's provider networks)."""
    overlay: bool = False
    """The Server has a tenant network: the host needs a tunnel endpoint."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """Weigher multipliers (Nova's ``*_weight_multiplier``): positive spreads, negative
    stacks; each weigher is normalised to [0, 1] over the candidate hosts first."""

    ram: float = 1.0
    cpu: float = 1.0
    soft_affinity: float = 1.0
    soft_anti_affinity: float = 1.0


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


def ignore_hosts_filter(host: HostState, req: Request) -> bool:
    """Not a host the request excludes (Nova's ``ignore_hosts``: a migration's source)."""
    return host.name not in req.ignore_hosts


def compute_filter(host: HostState, _req: Request) -> bool:
    """The host is up (fresh heartbeat, libvirt reachable) and not disabled."""
    return host.up and not host.disabled


def availability_zone_filter(host: HostState, req: Request) -> bool:
    return req.zone is None or host.zone == req.zone


def host_name_filter(host: HostState, req: Request) -> bool:
    return req.host_name is None or host.name == req.host_name


def image_properties_filter(host: HostState, req: Request) -> bool:
    """The host runs guests of the image's architecture, the way the image requires, with the
    firmware and machine type its properties ask for."""
    return (
        req.arch in host.archs
        and req.virt_type in (None, host.virt_type)
        and (req.firmware is None or req.firmware in host.firmwares)
        and (req.machine_type is None or req.machine_type in host.machine_types)
    )


def image_needs(req: Request) -> str:
    """What the image properties filter looks for, in words (for a refusal's message)."""
    needs = [req.arch]
    if req.virt_type is not None:
        needs.append(f"virt type {req.virt_type}")
    if req.firmware is not None:
        needs.append(f"firmware {req.firmware}")
    if req.machine_type is not None:
        needs.append(f"machine type {req.machine_type}")
    return ", ".join(needs)


def network_filter(host: HostState, req: Request) -> bool:
    """The host carries every network of the Server: it maps the physical network of each
    provider network (its agent's bridge mappings) and, for a tenant network, has a tunnel
    endpoint for the overlay."""
    return req.physnets <= host.physnets and (not req.overlay or host.tunnel)


def server_group_anti_affinity_filter(host: HostState, req: Request) -> bool:
    return req.group_policy != "anti-affinity" or req.group_hosts.get(host.name, 0) == 0


def server_group_affinity_filter(host: HostState, req: Request) -> bool:
    if req.group_policy != "affinity" or not any(req.group_hosts.values()):
        return True
    return req.group_hosts.get(host.name, 0) > 0


def vcpu_filter(host: HostState, req: Request) -> bool:
    return host.free.vcpus >= req.resources.vcpus


def ram_filter(host: HostState, req: Request) -> bool:
    return host.free.memory_mib >= req.resources.memory_mib


def disk_filter(host: HostState, req: Request) -> bool:
    return host.free.disk_gib >= req.resources.disk_gib


FILTERS: tuple[tuple[str, Filter], ...] = (
    ("IgnoreHostsFilter", ignore_hosts_filter),
    ("ComputeFilter", compute_filter),
    ("HostNameFilter", host_name_filter),
    ("AvailabilityZoneFilter", availability_zone_filter),
    ("ImagePropertiesFilter", image_properties_filter),
    ("NetworkFilter", network_filter),
    ("ServerGroupAntiAffinityFilter", server_group_anti_affinity_filter),
    ("ServerGroupAffinityFilter", server_group_affinity_filter),
    ("VCPUFilter", vcpu_filter),
    ("RamFilter", ram_filter),
    ("DiskFilter", disk_filter),
)


def applicable_filters(req: Request) -> list[tuple[str, Filter]]:
    """The filters that can refuse a host for ``req``, in order: one that lets every host
    through for this request (no zone asked, no group, no network) is not run. At 1,000 hosts
    each filter is a thousand calls per decision."""
    idle = {
        "IgnoreHostsFilter": not req.ignore_hosts,
        "HostNameFilter": req.host_name is None,
        "AvailabilityZoneFilter": req.zone is None,
        "NetworkFilter": not req.physnets and not req.overlay,
        "ServerGroupAntiAffinityFilter": req.group_policy != "anti-affinity",
        "ServerGroupAffinityFilter": req.group_policy != "affinity",
    }
    return [(name, keep) for name, keep in FILTERS if not idle.get(name, False)]


def ram_weight(host: HostState, _req: Request) -> float:
    """Free memory (spread with a positive multiplier)."""
    return float(host.free.memory_mib)


def cpu_weight(host: HostState, _req: Request) -> float:
    """Free vCPUs (spread with a positive multiplier)."""
    return float(host.free.vcpus)


def soft_affinity_weight(host: HostState, req: Request) -> float:
    if req.group_policy != "soft-affinity":
        return 0.0
    return float(req.group_hosts.get(host.name, 0))


def soft_anti_affinity_weight(host: HostState, req: Request) -> float:
    if req.group_policy != "soft-anti-affinity":
        return 0.0
    return -float(req.group_hosts.get(host.name, 0))


def _normalised(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(v - low) / (high - low) for v in values]


def weigh(req: Request, hosts: Sequence[HostState], weights: Weights) -> list[float]:
    """Each host's weight: the sum of normalised weighers times their multipliers."""
    total = [0.0 for _ in hosts]
    for fn, multiplier in (
        (ram_weight, weights.ram),
        (cpu_weight, weights.cpu),
        (soft_affinity_weight, weights.soft_affinity),
        (soft_anti_affinity_weight, weights.soft_anti_affinity),
    ):
        if multiplier == 0:
            continue
        if fn in (soft_affinity_weight, soft_anti_affinity_weight) and req.group_policy not in (
            "soft-affinity",
            "soft-anti-affinity",
        ):
            continue  # the same 0 for every host: it adds nothing
        for i, value in enumerate(_normalised([fn(h, req) for h in hosts])):
            total[i] += multiplier * value
    return total


def pick_host(
    req: Request, hosts: Sequence[HostState], weights: Weights | None = None
) -> Decision | NoValidHost:
    """The best host for ``req``, or why there is none."""
    candidates = list(hosts)
    rejections: list[tuple[str, int]] = []
    for name, keep in applicable_filters(req):
        passed = [h for h in candidates if keep(h, req)]
        if len(passed) < len(candidates):
            rejections.append((name, len(candidates) - len(passed)))
        candidates = passed
        if not candidates:
            return NoValidHost(tuple(rejections), len(hosts))
    scores = weigh(req, candidates, weights or Weights())
    top = max(scores)
    tied = [h for score, h in zip(scores, candidates, strict=True) if score == top]
    return Decision(max(tied, key=lambda h: _name_key(h.name)).name)


@functools.lru_cache(maxsize=1 << 16)
def _name_key(name: str) -> tuple[int, ...]:
    # Deterministic tie-break favouring the alphabetically first host under max().
    return tuple(-ord(c) for c in name)
