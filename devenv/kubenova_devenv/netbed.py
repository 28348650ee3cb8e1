"""The test bed's networks: hosts with their own network namespace on one underlay, a stand-in
"LAN" for provider networks with a "client" on it, and an "outside" for egress.

In the machine's root namespace, per run (every name carries the run's ``token``, so test runs
side by side never collide, and :meth:`NetBed.stop` removes all of it):

* an underlay bridge ``knu<token>`` carrying the underlay's first address, so that the root
  namespace's route to any host address names that bridge and nothing can leave by the
  machine's default route (:meth:`NetBed.check_route` asserts it before any traffic);
* per host a namespace ``knv<token>-<host>`` with ``eth0`` (its underlay address) on that
  bridge and ``lan0`` (no address: the agent puts it in a provider bridge) on the LAN bridge;
* a LAN bridge ``knl<token>`` (also carrying its subnet's first address), with a namespace
  ``knv<token>-client`` on it;
* a namespace ``knv<token>-outside`` on the underlay with no route back to any guest network:
  only SNAT to a host's underlay address reaches it.

No namespace gets a default route, and the root namespace does not forward, so guest traffic
can reach only these namespaces. Subnets are picked at random among 10.200.0.0/13 /24s that no
route of the machine uses yet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import secrets
import subprocess

UNDERLAY_HOST_OFFSET = 10
PEER_OFFSET = 250  # the client on the LAN, the outside on the underlay


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]")
    used = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue
    return used


def free_subnet(taken: list[ipaddress.IPv4Network] | None = None) -> ipaddress.IPv4Network:
    """A /24 under 10.200.0.0/13 that overlaps no route of the machine (nor ``taken``)."""
    pool = ipaddress.IPv4Network("10.200.0.0/13")
    used = _used_networks() + list(taken or [])
    for _ in range(200):
        candidate = ipaddress.IPv4Network(
            (int(pool.network_address) + 256 * random.randrange(pool.num_addresses // 256), 24)
        )
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free /24 under 10.200.0.0/13")


@dataclasses.dataclass(frozen=True)
class HostNet:
    """One host's namespace and addresses."""

    name: str
    netns: str
    underlay_address: ipaddress.IPv4Address
    underlay_device: str = "eth0"
    lan_device: str = "lan0"


@dataclasses.dataclass
class NetBed:
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(3))
    underlay: ipaddress.IPv4Network | None = None
    lan: ipaddress.IPv4Network | None = None
    hosts: dict[str, HostNet] = dataclasses.field(default_factory=dict)
    _namespaces: list[str] = dataclasses.field(default_factory=list)
    _links: list[str] = dataclasses.field(default_factory=list)

    @property
    def underlay_bridge(self) -> str:
        return f"knu{self.token}"

    @property
    def lan_bridge(self) -> str:
        return f"knl{self.token}"

    @property
    def client(self) -> str:
        """The namespace of the client on the LAN."""
        return f"knv{self.token}-client"

    @property
    def outside(self) -> str:
        """The namespace that stands for the outside (reached only through SNAT)."""
        return f"knv{self.token}-outside"

    @property
    def client_address(self) -> ipaddress.IPv4Address:
        assert self.lan is not None
        return self.lan.network_address + PEER_OFFSET

    @property
    def outside_address(self) -> ipaddress.IPv4Address:
        assert self.underlay is not None
        return self.underlay.network_address + PEER_OFFSET

    def start(self) -> None:
        self.underlay = free_subnet()
        self.lan = free_subnet([self.underlay])
        for bridge, net in ((self.underlay_bridge, self.underlay), (self.lan_bridge, self.lan)):
            _ip("link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            self._links.append(bridge)
            _ip("addr", "add", f"{net.network_address + 1}/{net.prefixlen}", "dev", bridge)
            _ip("link", "set", bridge, "up")
        self._peer(self.client, self.lan_bridge, "c", self.client_address, self.lan)
        self._peer(self.outside, self.underlay_bridge, "o", self.outside_address, self.underlay)
        self.check_route(self.outside_address)
        self.check_route(self.client_address)

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", netns=name)
        # New namespaces start with bridged IPv4 going through the IP hooks: not wanted.
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-q", "-w",
             "net.bridge.bridge-nf-call-iptables=0"],
            check=False, capture_output=True,
        )  # fmt: skip

    def _veth(self, netns: str, root_end: str, inside: str, bridge: str) -> None:
        _ip("link", "add", root_end, "type", "veth", "peer", "name", inside, "netns", netns)
        self._links.append(root_end)
        _ip("link", "set", root_end, "master", bridge, "up")
        _ip("link", "set", inside, "up", netns=netns)

    def _peer(
        self,
        netns: str,
        bridge: str,
        tag: str,
        address: ipaddress.IPv4Address,
        net: ipaddress.IPv4Network,
    ) -> None:
        self._namespace(netns)
        self._veth(netns, f"k{tag}{self.token}", "eth0", bridge)
        _ip("addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0", netns=netns)

    def add_host(self, name: str) -> HostNet:
        """A namespace for host ``name`` with its underlay and LAN links."""
        assert self.underlay is not None, "start() first"
        index = len(self.hosts)
        host = HostNet(
            name=name,
            netns=f"knv{self.token}-{name}",
            underlay_address=self.underlay.network_address + UNDERLAY_HOST_OFFSET + index,
        )
        self._namespace(host.netns)
        self._veth(host.netns, f"ku{self.token}{index}", host.underlay_device, self.underlay_bridge)
        self._veth(host.netns, f"kl{self.token}{index}", host.lan_device, self.lan_bridge)
        _ip("addr", "add", f"{host.underlay_address}/{self.underlay.prefixlen}", "dev",
            host.underlay_device, netns=host.netns)  # fmt: skip
        self.check_route(host.underlay_address)
        self.hosts[name] = host
        return host

    def add_remote_outside(self, name: str = "ext") -> tuple[str, ipaddress.IPv4Address]:
        """An "outside" on a subnet of its own, which the hosts' egress may reach (an agent
        denies egress to its underlay's subnet, where :attr:`outside` sits): a namespace
        ``knv<token>-<name>`` with ``eth0`` on the underlay bridge (one L2 segment, two
        subnets), reached by an on-link route this adds in every host's namespace (checked:
        ``ip route get`` names the host's underlay link, no gateway) and in the root namespace
        (onto the underlay bridge, so the machine's default route never carries it). It
        answers the hosts' underlay addresses by an on-link route to the underlay, and has no
        route to any guest network: only SNAT to a host's address reaches it.

        (namespace, its address). Call after the hosts are added."""
        assert self.underlay is not None, "start() first"
        subnet = free_subnet([self.underlay, *([self.lan] if self.lan else [])])
        netns = f"knv{self.token}-{name}"
        address = subnet.network_address + PEER_OFFSET
        self._peer(netns, self.underlay_bridge, name[:1], address, subnet)
        _ip("route", "add", str(self.underlay), "dev", "eth0", netns=netns)
        _ip("route", "add", str(subnet), "dev", self.underlay_bridge)
        self.check_route(address)
        for host in self.hosts.values():
            _ip("route", "add", str(subnet), "dev", host.underlay_device, netns=host.netns)
            route = json.loads(_ip("-j", "route", "get", str(address), netns=host.netns))[0]
            if route.get("dev") != host.underlay_device or route.get("gateway"):
                raise RuntimeError(f"{host.name}'s route to {address} is {route}")
        return netns, address

    def check_route(self, address: ipaddress.IPv4Address) -> None:
        """Raise unless the root namespace's route to ``address`` is one of this bed's bridges
        (so traffic to it can never leave the machine)."""
        route = json.loads(_ip("-j", "route", "get", str(address)))[0]
        if route.get("dev") not in (self.underlay_bridge, self.lan_bridge) or route.get("gateway"):
            raise RuntimeError(f"route to {address} is {route}, not one of the bed's bridges")

    def stop(self) -> None:
        """Remove every namespace and link this bed made (processes in them must be gone)."""
        for name in reversed(self._namespaces):
            _ip("netns", "del", name, check=False)
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)
        self._namespaces.clear()
        self._links.clear()
