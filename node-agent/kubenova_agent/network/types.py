"""What one host should have for its networks: plain, validated data (pydantic, so that a plan
survives a JSON round trip unchanged), no I/O. The agent builds these from the API objects;
:func:`kubenova_agent.network.host.apply` makes the host match them.

Names of host devices are derived here, once, from a network's short ``key`` (at most 10
characters, Linux interface names have 15): ``brk<key>`` the bridge, ``vxk-<vni>`` the VXLAN
device, ``tapk<key>`` the bridge end of the namespace's port, ``qrk<key>`` the host end of the
egress link, ``vlk<key>`` a VLAN sub-interface — Neutron's linuxbridge names with a ``k``, so
an operator who knows those finds their way and a Neutron agent on the same host is never
confused with kubenova (cleanup removes only these prefixes).
"""

from __future__ import annotations

import hashlib
import ipaddress
import pathlib
import re

import pydantic

KEY_PATTERN = r"^[a-z0-9]{1,10}$"
BRIDGE_PREFIX = "brk"
VXLAN_PREFIX = "vxk-"
TAP_PREFIX = "tapk"
EGRESS_PREFIX = "qrk"
VLAN_PREFIX = "vlk"
DEVICE_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX, TAP_PREFIX, EGRESS_PREFIX, VLAN_PREFIX)
#: The guests' MTU on a VXLAN overlay carried by a 1500-byte underlay (50 bytes of headers).
VXLAN_MTU = 1450
VXLAN_PORT = 4789
#: Inside a network namespace the ports have fixed names (each namespace is its own).
NS_PORT = "gw0"
NS_EGRESS = "ex0"
#: Egress links use one /31 of 169.254.0.0/16 per VNI (modulo the 32768 pairs there are).
EGRESS_LINKS = ipaddress.IPv4Network("169.254.0.0/16")


def key_of(uid: str) -> str:
    """A network's short key (10 hex characters) from its UID: stable, and short enough for
    every device name derived from it."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class Port(_Frozen):
    """A guest NIC on this host: DHCP answers this MAC with this address."""

    mac: str = pydantic.Field(pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
    ip: ipaddress.IPv4Address
    hostname: str = pydantic.Field(default="", pattern=r"^[A-Za-z0-9-]{0,63}$")


class Subnet(_Frozen):
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int = pydantic.Field(default=1500, ge=576, le=9000)

    @pydantic.model_validator(mode="after")
    def _gateway_inside(self) -> Subnet:
        if self.gateway is not None and self.gateway not in self.cidr:
            raise ValueError(f"gateway {self.gateway} is outside {self.cidr}")
        return self


class Overlay(_Frozen):
    """A tenant network's segment: a VXLAN VNI, flooded to ``peers`` (other hosts' underlay
    addresses)."""

    vni: int = pydantic.Field(ge=1, le=16_777_215)
    peers: frozenset[ipaddress.IPv4Address] = frozenset()


class Provider(_Frozen):
    """A provider network's segment: the host interface mapped to ``physnet``, untagged or in
    VLAN ``vlan``."""

    physnet: str
    vlan: int | None = pydantic.Field(default=None, ge=1, le=4094)


class NetworkPlan(_Frozen):
    """What this host needs for one network while it runs guests on it."""

    key: str = pydantic.Field(pattern=KEY_PATTERN)
    subnet: Subnet
    segment: Overlay | Provider
    egress: bool = False
    """Guests reach the underlay through SNAT (tenant networks only)."""
    dhcp_address: ipaddress.IPv4Address | None = None
    """This host's DHCP address on a provider network (unique per host; IPAM reserves it).
    A tenant network's DHCP answers from its gateway address, the same on every host."""
    dhcp: bool = True
    """Run a DHCP server for this host's guests (Neutron's ``enable_dhcp``)."""
    ports: tuple[Port, ...] = ()

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> NetworkPlan:
        if isinstance(self.segment, Overlay):
            if self.subnet.gateway is None:
                raise ValueError("a tenant network needs a gateway (its DHCP server and router)")
            if self.dhcp_address is not None:
                raise ValueError("a tenant network answers DHCP from its gateway")
        elif self.egress:
            raise ValueError("egress is for tenant networks; a provider network has its router")
        if self.dhcp_address is not None and self.dhcp_address not in self.subnet.cidr:
            raise ValueError(f"DHCP address {self.dhcp_address} is outside {self.subnet.cidr}")
        for port in self.ports:
            if port.ip not in self.subnet.cidr:
                raise ValueError(f"port {port.mac}: {port.ip} is outside {self.subnet.cidr}")
        return self

    @property
    def vni(self) -> int | None:
        return self.segment.vni if isinstance(self.segment, Overlay) else None

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.key}"

    @property
    def vxlan(self) -> str:
        assert isinstance(self.segment, Overlay)
        return f"{VXLAN_PREFIX}{self.segment.vni}"

    @property
    def tap(self) -> str:
        return f"{TAP_PREFIX}{self.key}"

    @property
    def egress_host_end(self) -> str:
        return f"{EGRESS_PREFIX}{self.key}"

    @property
    def vlan_device(self) -> str:
        return f"{VLAN_PREFIX}{self.key}"

    @property
    def has_namespace(self) -> bool:
        """Whether the network has a namespace on this host: a tenant network always (its
        gateway, DHCP and egress), a provider network only for its DHCP server (the LAN has
        its own router)."""
        return isinstance(self.segment, Overlay) or (self.dhcp and self.dhcp_address is not None)

    @property
    def runs_dhcp(self) -> bool:
        return self.dhcp and self.has_namespace

    @property
    def server_address(self) -> ipaddress.IPv4Address:
        """The namespace's address on the network: a tenant network's gateway, a provider
        network's DHCP address (never the LAN router's)."""
        address = self.subnet.gateway if isinstance(self.segment, Overlay) else self.dhcp_address
        assert address is not None, "only a plan with a namespace has a server address"
        return address

    @property
    def guest_mtu(self) -> int:
        return (
            min(self.subnet.mtu, VXLAN_MTU)
            if isinstance(self.segment, Overlay)
            else (self.subnet.mtu)
        )

    def server_mac(self, host_name: str) -> str:
        """The MAC of the namespace's port: a tenant network's gateway has one MAC on every
        host (guests keep their ARP entry through a live migration); a provider network's DHCP
        port has one per host."""
        seed = self.key if isinstance(self.segment, Overlay) else f"{self.key}/{host_name}"
        digest = hashlib.sha256(f"gateway/{seed}".encode()).digest()
        return "fa:16:3f:" + ":".join(f"{b:02x}" for b in digest[:3])

    def egress_pair(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """(host end, namespace end) of the egress link."""
        assert isinstance(self.segment, Overlay)
        base = int(EGRESS_LINKS.network_address) + 2 * (self.segment.vni % 32768)
        return ipaddress.IPv4Address(base), ipaddress.IPv4Address(base + 1)


class HostConfig(_Frozen):
    """This host's side of networking, from the agent's settings."""

    host_name: str
    underlay_device: str = "eth0"
    """The interface VXLAN runs over and egress leaves by."""
    underlay_address: ipaddress.IPv4Address
    """This host's tunnel endpoint (published on its Hypervisor for the other hosts)."""
    interface_mappings: dict[str, str] = {}
    """physnet -> host interface (Neutron's ``physical_interface_mappings``)."""
    bridge_mappings: dict[str, str] = {}
    """physnet -> an existing host bridge, used as it is for flat networks (``br0``)."""
    state_dir: pathlib.Path
    """Where dnsmasq's files live (one folder per network)."""
    netns_prefix: str = pydantic.Field(default="knet-", pattern=r"^[a-z0-9-]{1,20}$")
    """Prefix of the per-network namespaces (unique per host on a shared machine)."""
    egress_deny: tuple[ipaddress.IPv4Network, ...] = ()
    """Destinations egress traffic never reaches (the underlay the hosts talk on: their
    libvirtd, kubelet, the API server); SNAT serves everything else."""

    def netns(self, key: str) -> str:
        return f"{self.netns_prefix}{key}"

    def key_of_netns(self, name: str) -> str | None:
        if not name.startswith(self.netns_prefix):
            return None
        key = name[len(self.netns_prefix) :]
        return key if re.match(KEY_PATTERN, key) else None
