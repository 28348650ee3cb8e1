"""Networks as the Compute API knows them: the ``os-networks`` proxy (Nova answers it up to
microversion 2.35 from Neutron, 404 after) and the ``networks`` of ``POST /servers``.

A network's id is its UID: the project's Networks (tenant networks, namespaced) and the
ProviderNetworks every project may use (cluster-scoped, Neutron's shared provider networks).
Without a Network service in the catalog, the ``openstack`` CLI resolves ``--network NAME`` here
(``GET /os-networks/NAME``, then the list by ``label``), as it did with nova-network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.networks import (
    TENANT_MTU,
    Network,
    NetworkKind,
    ProviderNetwork,
    tenant_gateway,
)
from kubenova_openstack.compute import bodies
from kubenova_openstack.faults import Fault
from kubenova_openstack.web import Req, reply

#: The last microversion with the network proxy APIs (Nova's MAX_PROXY_API_SUPPORT_VERSION).
LAST_PROXY = "2.35"
#: NICs a Server may have (``spec.networks``' maxItems).
MAX_NICS = 8


@dataclasses.dataclass(frozen=True)
class Found:
    kind: NetworkKind
    obj: Network | ProviderNetwork

    @property
    def uid(self) -> str:
        return self.obj.uid

    @property
    def name(self) -> str:
        return self.obj.name


async def visible(req: Req) -> list[Found]:
    """The project's Networks, then every ProviderNetwork, as far as the caller may read them
    (a kind the caller may not list is none of theirs)."""

    own, shared = await asyncio.gather(
        req.kube.list_readable(
            req.context.caller, constants.NETWORKS, req.project, unknown_kind_ok=True
        ),
        req.kube.list_readable(
            req.context.caller, constants.PROVIDERNETWORKS, unknown_kind_ok=True
        ),
    )
    return [Found(NetworkKind.Network, Network.parse(o)) for o in own] + [
        Found(NetworkKind.ProviderNetwork, ProviderNetwork.parse(o)) for o in shared
    ]


def _view(found: Found, admin: bool) -> dict[str, Any]:
    """Nova's network dict (nova-network's keys; what kubenova does not have is null)."""
    spec = found.obj.spec
    net = ipaddress.IPv4Network(spec.cidr)
    if isinstance(found.obj, Network):
        gateway: str | None = found.obj.status.gateway or tenant_gateway(found.obj.spec)
        mtu, vlan = found.obj.status.mtu or TENANT_MTU, found.obj.status.vni
        project: str | None = found.obj.namespace
    else:
        gateway, mtu, vlan, project = spec.gateway, found.obj.spec.mtu, found.obj.spec.vlanID, None
    dns = [*spec.dnsNameservers, None, None]
    out: dict[str, Any] = {
        "id": found.uid,
        "label": found.name,
        "cidr": str(net),
        "netmask": str(net.netmask),
        "gateway": gateway,
        "broadcast": str(net.broadcast_address),
        "dns1": dns[0],
        "dns2": dns[1],
        "cidr_v6": None,
        "gateway_v6": None,
        "netmask_v6": None,
    }
    if admin:
        pools = spec.allocationPools or []
        out.update(
            {
                "created_at": _when(found.obj.metadata.creationTimestamp),
                "updated_at": None,
                "deleted_at": None,
                "deleted": False,
                "injected": False,
                "bridge": None,
                "bridge_interface": None,
                "vlan": vlan,
                "vpn_public_address": None,
                "vpn_public_port": None,
                "vpn_private_address": None,
                "dhcp_start": pools[0].start if pools else None,
                "dhcp_server": None,
                "enable_dhcp": spec.dhcp,
                "project_id": project,
                "host": None,
                "multi_host": True,
                "priority": None,
                "rxtx_base": None,
                "mtu": mtu,
                "share_address": False,
            }
        )
    return out


def _when(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") if value else None


async def index(req: Req) -> web.Response:
    req.only_until(LAST_PROXY)
    found, admin = await asyncio.gather(visible(req), req.kube.is_admin(req.context.caller))
    return reply({"networks": [_view(f, admin) for f in found]})


async def show(req: Req) -> web.Response:
    req.only_until(LAST_PROXY)
    wanted = req.params["id"]
    found, admin = await asyncio.gather(visible(req), req.kube.is_admin(req.context.caller))
    for f in found:
        if f.uid == wanted:
            return reply({"network": _view(f, admin)})
    raise Fault(404, f"Network {wanted} could not be found.")


async def attachments(
    req: Req, asked: list[bodies.NetworkRequest] | str | None
) -> list[dict[str, Any]] | None:
    """``spec.networks`` for the ``networks`` of a create: None (``auto``, or nothing asked
    for: the project's default Network, as Nova's auto-allocation), ``[]`` for ``none``, else
    one NIC per entry, in order, each a network of the project or a provider network. An
    empty list is what clients send before 2.37 when nothing is asked for: ``auto`` too."""
    if not asked or asked == "auto":
        return None
    if asked == "none":
        return []
    assert isinstance(asked, list)
    if len(asked) > MAX_NICS:
        raise Fault(400, f"kubenova gives a server at most {MAX_NICS} NICs, not {len(asked)}")
    known = await visible(req)
    out = []
    for entry in asked:
        if entry.port is not None:
            raise Fault(
                400, f"Port {entry.port} could not be found. kubenova has no ports: ask for a "
                "network by its uuid, with a fixed_ip if need be"
            )  # fmt: skip
        if entry.tag is not None:
            raise Fault(400, "kubenova does not tag devices: leave 'tag' out")
        if entry.uuid is None:
            raise Fault(400, "Bad networks format: network uuid is not in proper format ()")
        # By id, as Nova; by name too, for scripts that have no Neutron to ask for the id.
        match = [f for f in known if f.uid == entry.uuid] or [
            f for f in known if f.name == entry.uuid
        ]
        if len(match) != 1:
            raise Fault(400, f"Network {entry.uuid} could not be found.")
        nic: dict[str, Any] = {"networkRef": match[0].name, "kind": match[0].kind.value}
        if entry.fixed_ip is not None:
            try:
                address = ipaddress.ip_address(entry.fixed_ip)
            except ValueError as exc:
                raise Fault(400, f"Invalid fixed IP address ({entry.fixed_ip})") from exc
            if address.version != 4:
                raise Fault(400, f"kubenova's networks are IPv4: {entry.fixed_ip} cannot be had")
            nic["fixedIP"] = str(address)
        out.append(nic)
    return out
