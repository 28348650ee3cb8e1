"""The agent's side of networks: from the Networks and ProviderNetworks (every one, a small
kind) and this host's Servers, what this host needs for each network (a
:class:`~kubenova_agent.network.types.NetworkPlan`: bridge, VXLAN flood list, DHCP entries of
the local guests), converged by :func:`kubenova_agent.network.host.apply` whenever any of
them changes; and per Server the NICs its domain and config drive get.

A guest is never started on a bridge that is not there: :meth:`NetworkAgent.nics` plumbs the
Server's networks first (synchronously, under the same lock as the background loop), for a
new guest and for one arriving by a migration alike (the target prepares before the move).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable

from kubenova_agent import informer
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import cmd, guestdata, host, types
from kubenova_agent.settings import AgentSettings
from kubenova_api import kube
from kubenova_api.kube import RetryLater
from kubenova_api.networks import (
    HostNetworking,
    Network,
    NetworkKind,
    ProviderNetwork,
    ServerAddress,
    tenant_gateway,
)
from kubenova_api.resources import Server

log = logging.getLogger(__name__)

RESYNC_SECONDS = 30.0
"""The loop converges at least this often (a device removed by hand comes back)."""


def host_networking(cfg: AgentSettings) -> HostNetworking | None:
    """What this host offers networks (its Hypervisor's ``status.network``)."""
    if cfg.tunnel_address is None and not cfg.physical_networks:
        return None
    out = HostNetworking(physicalNetworks=cfg.physical_networks)
    if cfg.tunnel_address is not None:
        out.tunnelAddress = cfg.tunnel_address
    return out


def _underlay(cfg: AgentSettings) -> tuple[str, ipaddress.IPv4Network | None]:
    """(device, subnet) of the tunnel address on this host (read with ``ip -j addr``)."""
    if cfg.tunnel_address is None:
        return cfg.tunnel_device or "eth0", None
    wanted = ipaddress.IPv4Address(cfg.tunnel_address)
    for link in json.loads(cmd.run("ip", "-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            if info.get("local") == str(wanted):
                subnet = ipaddress.IPv4Network(f"{wanted}/{info['prefixlen']}", strict=False)
                return cfg.tunnel_device or link["ifname"], subnet
    raise RuntimeError(f"no interface of this host has the tunnel address {wanted}")


def host_config(cfg: AgentSettings) -> types.HostConfig:
    device, subnet = _underlay(cfg)
    deny = [ipaddress.IPv4Network(c.strip()) for c in cfg.egress_deny_cidrs.split(",") if c.strip()]
    if subnet is not None:
        deny.insert(0, subnet)
    return types.HostConfig(
        host_name=cfg.host_name,
        underlay_device=device,
        underlay_address=ipaddress.IPv4Address(cfg.tunnel_address or 0),  # 0: no overlay here
        interface_mappings=cfg.interface_mappings,
        bridge_mappings=cfg.bridges,
        state_dir=cfg.network_dir,
        egress_deny=tuple(deny),
    )


def _hostname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:63]


class NetworkAgent:
    """Keeps this host's networking equal to what its guests need."""

    def __init__(
        self,
        cfg: AgentSettings,
        k: kube.Kube,
        servers: Callable[[], list[Server]],
        watches: informer.Watches | None = None,
    ) -> None:
        self.cfg = cfg
        self._servers = servers
        self._due = threading.Event()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        watches = watches or informer.OwnWatches(k)
        self.networks = watches.every(Network, self.poke)
        self.providers = watches.every(ProviderNetwork, self.poke)
        self._incoming: dict[str, Server] = {}
        """Servers arriving by a migration (prepared here, not yet bound here), by UID."""
        self._applied: list[types.NetworkPlan] | None = None
        self.host: types.HostConfig | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, spawn: Callable[[str, Callable[[], None]], None]) -> None:
        if self.cfg.network_plumbing and host_networking(self.cfg) is not None:
            # Only a host configured for networks is touched (a host without any never
            # has a kubenova network to make or remove).
            cmd.use_host_namespace(self.cfg.network_namespace)
            self.host = host_config(self.cfg)
        spawn("networks", self.networks.run)
        spawn("providernetworks", self.providers.run)
        if self.host is not None:
            spawn("network-loop", self._loop)

    def stop(self) -> None:
        self._stop.set()
        self._due.set()
        self.networks.stop()
        self.providers.stop()

    def poke(self, _key: object = None) -> None:
        """Something changed (a network, a local Server): converge soon."""
        self._due.set()

    def forget(self, uid: str) -> None:
        """A migration to this host ended without the guest staying here."""
        with self._lock:
            self._incoming.pop(uid, None)
        self.poke()

    def _loop(self) -> None:
        self.networks.synced.wait()
        self.providers.synced.wait()
        delay = 1.0
        while not self._stop.is_set():
            poked = self._due.wait(RESYNC_SECONDS)
            self._due.clear()
            if self._stop.is_set():
                return
            try:
                # On a change, only a changed plan is applied; every RESYNC_SECONDS the host
                # is checked against the plans even if none changed.
                self.converge(force=not poked)
                delay = 1.0
            except Exception as exc:
                log.warning("converging this host's networks failed (%s); again in %.0fs", exc,
                            delay)  # fmt: skip
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                self._due.set()

    # ------------------------------------------------------------------ lookups
    def _network(self, address: ServerAddress, namespace: str) -> Network | ProviderNetwork | None:
        if address.kind == NetworkKind.ProviderNetwork.value:
            return self.providers.get(("", address.network))
        return self.networks.get((namespace, address.network))

    def _plan(
        self, net: Network | ProviderNetwork, ports: list[types.Port]
    ) -> types.NetworkPlan | None:
        """What this host needs for ``net`` (None: not ready for it yet — no VNI)."""
        me = self.cfg.host_name
        if isinstance(net, Network):
            if net.status.vni is None:
                return None
            peers = frozenset(
                ipaddress.IPv4Address(h.tunnelAddress)
                for h in net.status.hosts
                if h.tunnelAddress and h.name != me and h.tunnelAddress != self.cfg.tunnel_address
            )
            return types.NetworkPlan(
                key=types.key_of(net.uid),
                subnet=types.Subnet(
                    cidr=ipaddress.IPv4Network(net.spec.cidr),
                    gateway=ipaddress.IPv4Address(tenant_gateway(net.spec)),
                    dns=tuple(ipaddress.IPv4Address(a) for a in net.spec.dnsNameservers),
                    mtu=net.status.mtu or types.VXLAN_MTU,
                ),
                segment=types.Overlay(vni=net.status.vni, peers=peers),
                egress=net.spec.egress,
                dhcp=net.spec.dhcp,
                ports=tuple(ports),
            )
        spec = net.spec
        dhcp_address = next(
            (h.dhcpAddress for h in net.status.hosts if h.name == me and h.dhcpAddress), None
        )
        return types.NetworkPlan(
            key=types.key_of(net.uid),
            subnet=types.Subnet(
                cidr=ipaddress.IPv4Network(spec.cidr),
                gateway=ipaddress.IPv4Address(spec.gateway) if spec.gateway else None,
                dns=tuple(ipaddress.IPv4Address(a) for a in spec.dnsNameservers),
                mtu=spec.mtu,
            ),
            segment=types.Provider(physnet=spec.physicalNetwork, vlan=spec.vlanID),
            dhcp_address=ipaddress.IPv4Address(dhcp_address) if dhcp_address else None,
            dhcp=spec.dhcp,
            ports=tuple(ports),
        )

    def plans(self) -> list[types.NetworkPlan]:
        """Every network this host needs now: those of its guests (and of guests arriving),
        and those whose status lists this host (a migration's target before the move)."""
        me = self.cfg.host_name
        local = {s.uid: s for s in self._servers()}
        with self._lock:
            for uid in [u for u in self._incoming if u in local]:
                del self._incoming[uid]
            servers = [*local.values(), *self._incoming.values()]
        ports: dict[str, list[types.Port]] = {}
        nets: dict[str, Network | ProviderNetwork] = {}
        for server in servers:
            for address in server.status.addresses:
                net = self._network(address, server.namespace or "")
                if net is None:
                    continue
                nets[net.uid] = net
                port = types.Port(mac=address.mac, ip=ipaddress.IPv4Address(address.ip),
                                  hostname=_hostname(server.name))  # fmt: skip
                ports.setdefault(net.uid, []).append(port)
        listed: list[Network | ProviderNetwork] = [*self.networks.items(), *self.providers.items()]
        for obj in listed:
            if any(h.name == me for h in obj.status.hosts):
                nets.setdefault(obj.uid, obj)
        out = []
        for uid, net in sorted(nets.items()):
            plan = self._plan(net, sorted(ports.get(uid, []), key=lambda p: p.mac))
            if plan is not None and (self.host is None or host.carries(self.host, plan)):
                out.append(plan)
        return out

    def converge(self, force: bool = False) -> list[str]:
        """Make this host match :meth:`plans` (unless ``force``, nothing is done when the
        plans are those last applied)."""
        assert self.host is not None
        with self._lock:
            plans = self.plans()
            if plans == self._applied and not force:
                return []
            report = host.apply(self.host, plans)
            self._applied = plans
        if report.changes:
            log.info("networks: %s", "; ".join(report.changes))
        return report.changes

    # ------------------------------------------------------------------ per Server
    def nics(self, server: Server) -> list[tuple[domain_xml.Interface, guestdata.Nic]]:
        """The Server's NICs, in order, for its domain and ``network_data.json``; its
        networks are plumbed on this host before this returns (or RetryLater says why not)."""
        if not server.status.addresses:
            return []
        namespace = server.namespace or ""
        out = []
        for index, address in enumerate(server.status.addresses):
            net = self._network(address, namespace)
            if net is None:
                synced = self.networks.synced.is_set() and self.providers.synced.is_set()
                raise RetryLater(
                    "NetworkNotFound",
                    f"{address.kind} {address.network} of NIC {index} is "
                    + ("not known here yet" if not synced else "gone"),
                    2.0,
                )
            plan = self._plan(net, [])
            if plan is None:
                raise RetryLater("NetworkNotReady", f"Network {address.network} has no VNI", 2.0)
            bridge = host.bridge_for(self.host, plan) if self.host is not None else plan.bridge
            out.append(
                (
                    domain_xml.Interface(mac=address.mac, bridge=bridge, mtu=plan.guest_mtu),
                    guestdata.Nic(
                        port_id=f"{server.uid}-{index}",
                        network_id=net.uid,
                        mac=address.mac,
                        ip=ipaddress.IPv4Address(address.ip),
                        cidr=plan.subnet.cidr,
                        gateway=plan.subnet.gateway,
                        dns=plan.subnet.dns,
                        mtu=plan.guest_mtu,
                        dhcp=net.spec.dhcp,
                    ),
                )
            )
        if self.host is not None:
            if server.status.nodeName != self.cfg.host_name:
                with self._lock:
                    self._incoming[server.uid] = server
            try:
                self.converge()
            except (cmd.CommandFailed, host.NotMapped, OSError, RuntimeError) as exc:
                why = f"plumbing its networks failed: {exc}"
                raise RetryLater("NetworkPlumbing", why, 5.0) from exc
        return out
