"""IP address management and VNI allocation: plain functions, no kopf and no API calls, so the
binding pass can call them serially (as it decides claims) and tests can call them by the
thousand. In: a network's subnet, what is held on it (:class:`Held`: kept incrementally by
:class:`kubenova_operator.cluster.Cluster` from the Servers' status, so rebuilt from what the
API server holds after a restart, plus the bindings this controller has written but not yet
seen come back), and a request; out: a :class:`Lease` or a typed :class:`Refusal` naming why.

MACs are Nova's ``fa:16:3e`` prefix and derived from the holder, so a Server keeps its MAC for
its whole life (stop/start, rescue, resize, migration) and a controller restarted mid-burst
computes the same one again; a collision within one network is resolved by re-deriving.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
from collections.abc import Collection, Container, Iterable, Mapping

MAC_PREFIX = "fa:16:3e"
VNI_MIN = 1
VNI_MAX = 32767
"""VNIs handed out (a host's egress link is derived from its network's VNI among 32768 /31s of
169.254.0.0/16, so the range stays within that many)."""


class Reason(enum.StrEnum):
    """Why an address was refused (the condition's reason)."""

    OutsideSubnet = "FixedIPOutsideSubnet"
    NetworkAddress = "FixedIPIsNetworkAddress"
    BroadcastAddress = "FixedIPIsBroadcastAddress"
    Gateway = "FixedIPIsGateway"
    Reserved = "FixedIPReserved"
    Taken = "FixedIPTaken"
    PoolExhausted = "AddressPoolExhausted"


@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


@dataclasses.dataclass(frozen=True)
class Subnet:
    """What IPAM needs of a network."""

    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    pools: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ...] = ()
    """Inclusive ranges automatic addresses come from; empty: the whole subnet."""
    reserved: frozenset[ipaddress.IPv4Address] = frozenset()
    """Addresses no Server may have (the hosts' DHCP ports on a provider network, say)."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """An address held by one NIC: ``holder`` is ``<server uid>/<nic index>``."""

    holder: str
    ip: ipaddress.IPv4Address
    mac: str


@dataclasses.dataclass(frozen=True)
class Request:
    holder: str
    fixed_ip: ipaddress.IPv4Address | None = None


def holder_of(server_uid: str, nic_index: int) -> str:
    return f"{server_uid}/{nic_index}"


def _mac(holder: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{holder}#{attempt}".encode()).digest()
    return MAC_PREFIX + "".join(f":{b:02x}" for b in digest[:3])


def mac_for(holder: str, macs_in_use: Container[str] = ()) -> str:
    """The holder's MAC: stable, and unique among ``macs_in_use`` (the network's)."""
    attempt = 0
    while (mac := _mac(holder, attempt)) in macs_in_use:
        attempt += 1
    return mac


def unusable(subnet: Subnet) -> set[ipaddress.IPv4Address]:
    """Addresses of the subnet no guest may have: network, broadcast, gateway, reserved."""
    bad = set(subnet.reserved)
    if subnet.cidr.prefixlen < 31:
        bad |= {subnet.cidr.network_address, subnet.cidr.broadcast_address}
    if subnet.gateway is not None:
        bad.add(subnet.gateway)
    return bad


def check_fixed(
    subnet: Subnet, ip: ipaddress.IPv4Address, taken_by: str | None, holder: str
) -> Refusal | None:
    """Why ``ip`` cannot be ``holder``'s fixed address, or None when it can."""
    cidr = subnet.cidr
    if ip not in cidr:
        return Refusal(Reason.OutsideSubnet, f"{ip} is outside the subnet {cidr}")
    if cidr.prefixlen < 31 and ip == cidr.network_address:
        return Refusal(Reason.NetworkAddress, f"{ip} is the network address of {cidr}")
    if cidr.prefixlen < 31 and ip == cidr.broadcast_address:
        return Refusal(Reason.BroadcastAddress, f"{ip} is the broadcast address of {cidr}")
    if ip == subnet.gateway:
        return Refusal(Reason.Gateway, f"{ip} is the gateway of {cidr}")
    if ip in subnet.reserved:
        return Refusal(Reason.Reserved, f"{ip} is reserved on {cidr}")
    if taken_by is not None and taken_by != holder:
        return Refusal(Reason.Taken, f"{ip} is already held by {taken_by}")
    return None


def _candidates(
    subnet: Subnet, after: ipaddress.IPv4Address | None = None
) -> Iterable[ipaddress.IPv4Address]:
    """The pools' addresses in order, starting after ``after`` and wrapping around (so a
    search does not walk every held address from the start again for each new NIC)."""
    ranges = [(int(s), int(e)) for s, e in subnet.pools] or [
        (int(subnet.cidr.network_address), int(subnet.cidr.broadcast_address))
    ]
    if after is not None:
        a = int(after)
        ranges = [(max(lo, a + 1), hi) for lo, hi in ranges if hi > a] + [
            (lo, min(hi, a)) for lo, hi in ranges if lo <= a
        ]
    for lo, hi in ranges:
        for value in range(lo, hi + 1):
            yield ipaddress.IPv4Address(value)


@dataclasses.dataclass(frozen=True)
class Held:
    """What is taken on one network: address -> holder, and the MACs in use."""

    by_ip: Mapping[ipaddress.IPv4Address, str]
    macs: Container[str] = ()

    @classmethod
    def of(cls, leases: Iterable[Lease]) -> Held:
        leases = list(leases)
        return cls({lease.ip: lease.holder for lease in leases}, {lease.mac for lease in leases})


def allocate(
    subnet: Subnet, held: Held, request: Request, after: ipaddress.IPv4Address | None = None
) -> Lease | Refusal:
    """An address and MAC for ``request`` (a NIC that holds none yet): its fixed IP when
    allowed, else the first free address of the pools (after ``after``, the last one given,
    wrapping around; from the lowest when None). ``held`` is what the network's other NICs
    hold (the controller keeps it incrementally)."""
    mac = mac_for(request.holder, held.macs)
    if request.fixed_ip is not None:
        refusal = check_fixed(subnet, request.fixed_ip, held.by_ip.get(request.fixed_ip),
                              request.holder)  # fmt: skip
        return refusal or Lease(request.holder, request.fixed_ip, mac)
    bad = unusable(subnet)
    for ip in _candidates(subnet, after):
        if ip in subnet.cidr and ip not in bad and ip not in held.by_ip:
            return Lease(request.holder, ip, mac)
    return Refusal(
        Reason.PoolExhausted, f"no free address left in {subnet.cidr} ({len(held.by_ip)} held)"
    )


class VniExhausted(Exception):
    """Every VNI of the range is in use."""


def allocate_vni(network_uid: str, in_use: Collection[int],
                 low: int = VNI_MIN, high: int = VNI_MAX) -> int:  # fmt: skip
    """A VNI for a new tenant network that no network in use has. The search starts at a
    point derived from the network's UID (a controller that restarts before recording it picks
    the same one again) and goes up, wrapping around."""
    size = high - low + 1
    start = int(hashlib.sha256(network_uid.encode()).hexdigest(), 16) % size
    used = set(in_use)
    for step in range(size):
        vni = low + (start + step) % size
        if vni not in used:
            return vni
    raise VniExhausted(f"all {size} VNIs from {low} to {high} are in use")
