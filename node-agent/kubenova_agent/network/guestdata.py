"""What the guest is told about its network on the config drive: Nova's
``openstack/latest/network_data.json`` (links, networks, services), as cloud-init and Nova's
other consumers read it. A NIC whose network also has DHCP may be written as ``ipv4_dhcp``
(the guest asks DHCP, as Nova writes it for DHCP-enabled subnets) or as ``ipv4`` with its
address (static configuration, no DHCP needed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pydantic

#: The default route's destination, as Nova writes it.
ANY = str(ipaddress.IPv4Address(0))


class Nic(pydantic.BaseModel):
    """One NIC of a Server, in the guest's order."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    port_id: str
    """A stable id of the NIC (Nova's VIF/port id): the Server's UID and the NIC index."""
    network_id: str
    """The network's id (its UID)."""
    mac: str
    ip: ipaddress.IPv4Address
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int = 1500
    dhcp: bool = False
    """Write the network as ``ipv4_dhcp`` (the guest asks DHCP) instead of its address."""


def link_id(nic: Nic) -> str:
    """The link's id: ``tap`` + the port id's first 11 characters, as Nova names a tap."""
    return "tap" + nic.port_id[:11]


def network_data(nics: Sequence[Nic]) -> dict[str, Any]:
    """``network_data.json`` of a Server with ``nics``."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for index, nic in enumerate(nics):
        links.append(
            {
                "id": link_id(nic),
                "vif_id": nic.port_id,
                "type": "bridge",
                "mtu": nic.mtu,
                "ethernet_mac_address": nic.mac,
            }
        )
        dns = [{"type": "dns", "address": str(address)} for address in nic.dns]
        network: dict[str, Any] = {"id": f"network{index}", "link": link_id(nic)}
        if nic.dhcp:
            network["type"] = "ipv4_dhcp"
        else:
            network["type"] = "ipv4"
            network["ip_address"] = str(nic.ip)
            network["netmask"] = str(nic.cidr.netmask)
            network["routes"] = (
                [{"network": ANY, "netmask": ANY, "gateway": str(nic.gateway)}]
                if nic.gateway is not None
                else []
            )
        network["network_id"] = nic.network_id
        network["services"] = dns
        networks.append(network)
        services += [s for s in dns if s not in services]
    return {"links": links, "networks": networks, "services": services}
