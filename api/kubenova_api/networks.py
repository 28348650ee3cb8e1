"""Networks (Neutron's model without Neutron): ProviderNetwork (cluster-scoped, made by an
admin: a physical network the hosts map to a bridge, flat or VLAN) and Network (namespaced,
a tenant's isolated VXLAN overlay, its VNI given by the controller), plus what a Server says
about its NICs (``spec.networks``) and is told back (``status.addresses``).

Every rule the schema can state is checked at admission, twice over: as CEL (the API server;
Kubernetes' ``isCIDR``/``cidr``/``isIP``/``ip`` functions, and IPv4 arithmetic on the
octets where CEL has no function, such as "not the broadcast address") and as pydantic
validators (the same rules where Python code builds these objects).
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any, ClassVar

from pydantic import Field, model_validator

from kubenova_api import constants
from kubenova_api.common import ApiModel, Condition, KubeObject, StatusModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
IPV4_MAX = 15
CIDR_MAX = 18
MIN_PREFIX, MAX_PREFIX = 8, 30
#: Addresses in a network of each prefix length (CEL has no power function).
_SIZES = "[" + ", ".join(str(2 ** (32 - p)) for p in range(33)) + "]"


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _v4(expr: str) -> str:
    return f"isIP({expr}) && ip({expr}).family() == 4"


def _int(expr: str) -> str:
    """CEL: the IPv4 address string ``expr`` as an integer."""
    parts = [f"int({expr}.split('.')[{i}]) * {256 ** (3 - i)}" for i in range(4)]
    return "(" + " + ".join(parts) + ")"


_NET = _int("self.cidr.split('/')[0]")
_LAST = f"({_NET} + {_SIZES}[cidr(self.cidr).prefixLength()] - 1)"
_CIDR_OK = "isCIDR(self.cidr) && cidr(self.cidr).ip().family() == 4"


def _inside(expr: str) -> str:
    """CEL: ``expr`` is a usable address of ``self.cidr`` (not the network or broadcast)."""
    return (
        f"cidr(self.cidr).containsIP({expr}) && {_int(expr)} != {_NET} && {_int(expr)} != {_LAST}"
    )


SUBNET_RULES = (
    (
        f"{_CIDR_OK} && cidr(self.cidr) == cidr(self.cidr).masked()",
        "cidr must be an IPv4 network in CIDR notation with no host bits set, e.g. 10.0.0.0/24",
    ),
    (
        f"!({_CIDR_OK}) || (cidr(self.cidr).prefixLength() >= {MIN_PREFIX} && "
        f"cidr(self.cidr).prefixLength() <= {MAX_PREFIX})",
        f"cidr's prefix length must be between /{MIN_PREFIX} and /{MAX_PREFIX}",
    ),
    (
        f"!has(self.gateway) || !({_CIDR_OK}) || ({_v4('self.gateway')} && "
        f"{_inside('self.gateway')})",
        "gateway must be an IPv4 address inside cidr, neither its network nor its broadcast "
        "address",
    ),
    (
        f"!has(self.allocationPools) || !({_CIDR_OK}) || self.allocationPools.all(p, "
        f"{_v4('p.start')} && {_v4('p.end')} && {_inside('p.start')} && {_inside('p.end')} && "
        f"{_int('p.start')} <= {_int('p.end')})",
        "every allocation pool must lie inside cidr (network and broadcast excluded), start <= end",
    ),
    (
        "!has(self.allocationPools) || !has(self.gateway) || !isIP(self.gateway) || "
        f"self.allocationPools.all(p, !isIP(p.start) || !isIP(p.end) || "
        f"{_int('self.gateway')} < {_int('p.start')} || {_int('self.gateway')} > {_int('p.end')})",
        "the gateway must not be inside an allocation pool",
    ),
)


class AllocationPool(ApiModel):
    """An inclusive range of addresses IPAM hands out automatically."""

    start: str = Field(max_length=IPV4_MAX, description="First address handed out (IPv4).")
    end: str = Field(max_length=IPV4_MAX, description="Last address handed out (IPv4).")


class SubnetSpec(ApiModel):
    """An IPv4 subnet: what IPAM hands out and DHCP announces."""

    model_config = ApiModel.model_config | {"json_schema_extra": _cel(*SUBNET_RULES)}

    cidr: str = Field(max_length=CIDR_MAX, description="The IPv4 subnet, e.g. 10.0.0.0/24.")
    gateway: str | None = Field(
        default=None,
        max_length=IPV4_MAX,
        description="The router's address (DHCP's router option); inside cidr.",
    )
    allocationPools: list[AllocationPool] | None = Field(
        default=None,
        max_length=16,
        description="Ranges automatic addresses come from; the whole subnet when unset.",
    )
    dnsNameservers: list[str] = Field(
        default_factory=list,
        max_length=5,
        description="DNS servers announced to guests (IPv4).",
        json_schema_extra={
            "items": {"type": "string", "maxLength": IPV4_MAX, "description": "An IPv4 address."},
            **_cel(("self.all(a, isIP(a) && ip(a).family() == 4)", "DNS servers must be IPv4")),
        },
    )
    dhcp: bool = Field(
        default=True,
        description="Answer DHCP for the guests (a dnsmasq per network on each host that runs "
        "them; network_data.json then says ipv4_dhcp, as Nova writes it). False: guests are "
        "configured from network_data.json alone (Neutron's enable_dhcp).",
    )

    @model_validator(mode="after")
    def _check(self) -> SubnetSpec:
        net = ipaddress.IPv4Network(self.cidr)  # strict: host bits set is an error
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
            raise ValueError(
                f"cidr's prefix length must be between /{MIN_PREFIX} and /{MAX_PREFIX}"
            )
        # By arithmetic, never by listing: a /8 has 16 million hosts.
        first, last = net.network_address + 1, net.broadcast_address - 1

        def usable(ip: ipaddress.IPv4Address) -> bool:
            return first <= ip <= last

        if self.gateway is not None and not usable(ipaddress.IPv4Address(self.gateway)):
            raise ValueError(f"gateway {self.gateway} is not a usable address of {net}")
        for pool in self.allocationPools or []:
            start, end = ipaddress.IPv4Address(pool.start), ipaddress.IPv4Address(pool.end)
            if not usable(start) or not usable(end) or start > end:
                raise ValueError(f"allocation pool {start}-{end} is not inside {net}")
            if self.gateway is not None and start <= ipaddress.IPv4Address(self.gateway) <= end:
                raise ValueError("the gateway must not be inside an allocation pool")
        for server in self.dnsNameservers:
            ipaddress.IPv4Address(server)
        return self


class ProviderNetworkSpec(SubnetSpec):
    """A network of the datacenter LAN that hosts carry (Neutron's provider network)."""

    model_config = SubnetSpec.model_config | {
        "json_schema_extra": _cel(
            *SUBNET_RULES,
            (
                "self.physicalNetwork == oldSelf.physicalNetwork && "
                "(has(self.vlanID) == has(oldSelf.vlanID)) && "
                "(!has(self.vlanID) || self.vlanID == oldSelf.vlanID) && self.cidr == oldSelf.cidr",
                "physicalNetwork, vlanID and cidr are immutable",
            ),
        )
    }

    physicalNetwork: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="The physical network's name: each host maps it to an interface or bridge "
        "(its agent's bridge mappings); only hosts that map it run this network's servers.",
    )
    vlanID: int | None = Field(
        default=None, ge=1, le=4094, description="802.1Q VLAN ID; untagged (flat) when unset."
    )
    mtu: int = Field(default=1500, ge=576, le=9000, description="The LAN's MTU.")


class NetworkHost(StatusModel):
    """A host that runs Servers of a network (or receives one by a migration)."""

    name: str = Field(description="The host (its Hypervisor's name).")
    tunnelAddress: str | None = Field(
        default=None, description="Its VXLAN endpoint (tenant networks): the others flood to it."
    )
    dhcpAddress: str | None = Field(
        default=None,
        description="Its DHCP server's address on a provider network (held by IPAM).",
    )


class ProviderNetworkStatus(StatusModel):
    observedGeneration: int | None = Field(
        default=None, description="The .metadata.generation the controller last acted on."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Ready, or InUse.")
    hosts: list[NetworkHost] = Field(
        default_factory=list,
        description="Hosts that run its Servers, each with its DHCP address (controller).",
    )


class NetworkSpec(SubnetSpec):
    """A tenant's isolated network: a VXLAN overlay across the hosts that run its servers."""

    model_config = SubnetSpec.model_config | {
        "json_schema_extra": _cel(
            *SUBNET_RULES,
            ("self.cidr == oldSelf.cidr", "cidr is immutable"),
        )
    }

    egress: bool = Field(
        default=False, description="Guests reach the outside through SNAT on their host."
    )
    default: bool = Field(
        default=False,
        description="The namespace's default network: Servers that omit spec.networks get a "
        "NIC on it (as Nova's 'auto').",
    )


class NetworkStatus(StatusModel):
    vni: int | None = Field(
        default=None, description="The VXLAN network identifier (given by the controller)."
    )
    mtu: int | None = Field(default=None, description="The guests' MTU (1450 over VXLAN).")
    gateway: str | None = Field(
        default=None, description="The gateway in use: spec.gateway, else cidr's first address."
    )
    hosts: list[NetworkHost] = Field(
        default_factory=list,
        description="Hosts that run its Servers (or receive one by a migration) with their "
        "tunnel addresses: each host floods the overlay to exactly the others (l2population).",
    )
    observedGeneration: int | None = Field(
        default=None, description="The .metadata.generation the controller last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, or InUse; Stalled when no VNI is left."
    )


class Network(KubeObject):
    KIND: ClassVar[str] = "Network"
    PLURAL: ClassVar[str] = constants.NETWORKS
    spec: NetworkSpec
    status: NetworkStatus = Field(default_factory=NetworkStatus)


class ProviderNetwork(KubeObject):
    KIND: ClassVar[str] = "ProviderNetwork"
    PLURAL: ClassVar[str] = constants.PROVIDERNETWORKS
    spec: ProviderNetworkSpec
    status: ProviderNetworkStatus = Field(default_factory=ProviderNetworkStatus)


TENANT_MTU = 1450
"""A tenant network's guest MTU: a 1500-byte underlay less VXLAN's 50 bytes of headers."""


def tenant_gateway(spec: NetworkSpec) -> str:
    """A tenant network's gateway: ``spec.gateway``, else the subnet's first address (as
    Neutron picks). Its DHCP server and router answer there on every host."""
    if spec.gateway:
        return spec.gateway
    return str(next(ipaddress.IPv4Network(spec.cidr).hosts()))


def net_key(kind: NetworkKind, namespace: str | None, name: str) -> str:
    """A network's key across both kinds: ``namespace/name`` for a Network, ``name`` for a
    ProviderNetwork (cluster-scoped; a DNS name never holds a slash)."""
    return f"{namespace}/{name}" if kind is NetworkKind.Network else name


class NetworkKind(enum.StrEnum):
    Network = "Network"
    ProviderNetwork = "ProviderNetwork"


class NetworkAttachment(ApiModel):
    """One NIC of a Server, in the guest's order."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": _cel(
            (
                "!has(self.fixedIP) || (isIP(self.fixedIP) && ip(self.fixedIP).family() == 4)",
                "fixedIP must be an IPv4 address",
            ),
        )
    }

    networkRef: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of a Network in the Server's namespace (or of a ProviderNetwork).",
    )
    kind: NetworkKind = Field(
        default=NetworkKind.Network, description="Network (default) or ProviderNetwork."
    )
    fixedIP: str | None = Field(
        default=None,
        max_length=IPV4_MAX,
        description="Ask for this IPv4 address; refused with a condition naming why when it is "
        "outside the subnet, its network/broadcast address, the gateway, or taken.",
    )


class ServerAddress(StatusModel):
    """An address of a Server's NIC (Nova's ``addresses``)."""

    network: str = Field(description="The network's name.")
    kind: str = Field(default="Network", description="Network or ProviderNetwork.")
    ip: str = Field(description="The NIC's IPv4 address.")
    mac: str = Field(description="The NIC's MAC address.")


class HostNetworking(StatusModel):
    """What a host offers networks (written by its agent)."""

    tunnelAddress: str | None = Field(
        default=None, description="The host's VXLAN endpoint (underlay address)."
    )
    physicalNetworks: list[str] = Field(
        default_factory=list, description="Physical networks this host maps (bridge mappings)."
    )
