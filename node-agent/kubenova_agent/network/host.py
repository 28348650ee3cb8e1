"""Converge a host's networking to a list of plans: :func:`apply` is level-triggered (it reads
what is there and changes the difference), safe to repeat and to interrupt, and removes every
network of kubenova's that is no longer planned (its dnsmasq, namespace, devices and tables).

The agent calls it whenever the set of local guests, a network, or the hosts that run a
network's guests change; :func:`bridge_for` names the bridge a guest's NIC attaches to.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib

from kubenova_agent.network import cmd, dhcp, links, nat, types


class NotMapped(ValueError):
    """A provider network whose physical network this host does not carry."""

    def __init__(self, physnet: str) -> None:
        self.physnet = physnet
        super().__init__(f"this host has no mapping for physical network {physnet!r}")


@dataclasses.dataclass
class Report:
    """What one :func:`apply` changed (empty when the host was as planned)."""

    changes: list[str] = dataclasses.field(default_factory=list)


def bridge_for(host: types.HostConfig, plan: types.NetworkPlan) -> str:
    """The bridge guests of ``plan`` attach to: a flat provider network on a bridge mapping
    uses the mapped bridge as it is, every other network its own."""
    seg = plan.segment
    if isinstance(seg, types.Provider) and seg.vlan is None and seg.physnet in host.bridge_mappings:
        return host.bridge_mappings[seg.physnet]
    return plan.bridge


def carries(host: types.HostConfig, plan: types.NetworkPlan) -> bool:
    """Whether this host can carry ``plan`` (tenant networks always; provider networks when
    their physical network is mapped here: what the scheduler's filter asks)."""
    seg = plan.segment
    if isinstance(seg, types.Overlay):
        return True
    if seg.physnet in host.interface_mappings:
        return True
    return seg.vlan is None and seg.physnet in host.bridge_mappings


def prepare(host: types.HostConfig, egress: bool) -> None:
    """Host-wide switches: bridged frames skip the IP hooks (else guests' traffic crossing a
    bridge would be filtered and NATed as if routed), and forwarding for egress."""
    if pathlib.Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        cmd.sysctl("net.bridge.bridge-nf-call-iptables", "0")
    if egress:
        cmd.sysctl("net.ipv4.ip_forward", "1")


def apply(host: types.HostConfig, plans: list[types.NetworkPlan]) -> Report:
    """Make this host have exactly the networks of ``plans``."""
    report = Report()
    keys = [p.key for p in plans]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two plans for one network: {keys}")
    for plan in plans:
        if not carries(host, plan):
            assert isinstance(plan.segment, types.Provider)
            raise NotMapped(plan.segment.physnet)
    prepare(host, egress=any(p.egress for p in plans))
    for plan in plans:
        _ensure(host, plan, report)
    _remove_others(host, plans, report)
    return report


def _ensure_netns(name: str, report: Report) -> None:
    if name not in cmd.netns_list():
        cmd.run("ip", "netns", "add", name)
        report.changes.append(f"namespace {name} added")
    cmd.run("ip", "link", "set", "dev", "lo", "up", netns=name)


def _ensure(host: types.HostConfig, plan: types.NetworkPlan, report: Report) -> None:
    ns = host.netns(plan.key)
    if plan.has_namespace:
        _ensure_netns(ns, report)
    bridge = bridge_for(host, plan)
    mtu = plan.guest_mtu
    seg = plan.segment
    if isinstance(seg, types.Overlay):
        links.ensure_bridge(bridge, mtu)
        links.ensure_vxlan(plan.vxlan, seg.vni, host.underlay_address, host.underlay_device,
                           bridge, mtu)  # fmt: skip
        added, removed = links.sync_flood(plan.vxlan, seg.peers)
        report.changes += [f"{plan.vxlan}: flood to {p} added" for p in sorted(added)]
        report.changes += [f"{plan.vxlan}: flood to {p} removed" for p in sorted(removed)]
        nat.ensure_gateway_guard(plan, host.host_name)
    elif bridge == plan.bridge:
        links.ensure_bridge(bridge, mtu)
        parent = host.interface_mappings[seg.physnet]
        if seg.vlan is None:
            links.set_up(parent, master=bridge)
        else:
            links.set_up(parent)
            links.ensure_vlan(plan.vlan_device, parent, seg.vlan, bridge, mtu)
    if not plan.has_namespace:
        # A provider network whose host has no DHCP address (yet), or no DHCP: the guests
        # need the bridge only.
        if dhcp.stop(host, plan.key):
            report.changes.append(f"dhcp of {plan.key} stopped")
        links.delete(plan.tap)
        if ns in cmd.netns_list():
            cmd.run("ip", "netns", "del", ns)
            report.changes.append(f"namespace {ns} removed")
        return
    links.ensure_veth_into(plan.tap, ns, types.NS_PORT, mtu, ns_mac=plan.server_mac(host.host_name))
    links.set_up(plan.tap, mtu=mtu, master=bridge)
    server = ipaddress.IPv4Interface(f"{plan.server_address}/{plan.subnet.cidr.prefixlen}")
    links.ensure_address(types.NS_PORT, server, ns)
    _ensure_egress(host, plan, ns)
    if not plan.runs_dhcp:
        if dhcp.stop(host, plan.key):
            report.changes.append(f"dhcp of {plan.key} stopped")
        return
    outcome = dhcp.ensure(host, plan)
    if outcome is not dhcp.Outcome.unchanged:
        report.changes.append(f"dhcp of {plan.key} {outcome.value} ({len(plan.ports)} ports)")


def _ensure_egress(host: types.HostConfig, plan: types.NetworkPlan, ns: str) -> None:
    if not plan.egress:
        links.delete(plan.egress_host_end)
        cmd.sysctl("net.ipv4.ip_forward", "0", netns=ns)
        if ("ip", nat.PREFIX + plan.key) in nat.tables():
            nat.delete("ip", nat.PREFIX + plan.key)
        if ("ip", "kubenova") in nat.tables(ns):
            nat.delete("ip", "kubenova", ns)
        return
    host_end, ns_end = plan.egress_pair()
    links.ensure_veth_into(plan.egress_host_end, ns, types.NS_EGRESS, 1500)
    links.set_up(plan.egress_host_end)
    links.ensure_address(plan.egress_host_end, ipaddress.IPv4Interface(f"{host_end}/31"), None)
    links.ensure_address(types.NS_EGRESS, ipaddress.IPv4Interface(f"{ns_end}/31"), ns)
    cmd.run("ip", "route", "replace", "default", "via", str(host_end), netns=ns)
    cmd.sysctl("net.ipv4.ip_forward", "1", netns=ns)
    nat.ensure_namespace_egress(plan, ns)
    nat.ensure_host_egress(plan, host.underlay_device, host.egress_deny)


def _remove_others(host: types.HostConfig, plans: list[types.NetworkPlan], report: Report) -> None:
    keep_keys = {p.key for p in plans}
    keep_ns = {p.key for p in plans if p.has_namespace}
    keep_devices = {p.vxlan for p in plans if p.vni is not None}
    for plan in plans:
        keep_devices |= {plan.bridge, plan.vlan_device}
        if plan.has_namespace:
            keep_devices.add(plan.tap)
        if plan.egress:
            keep_devices.add(plan.egress_host_end)
    for key in dhcp.served_keys(host):
        if key not in keep_keys and dhcp.stop(host, key):
            report.changes.append(f"dhcp of {key} stopped")
    for name in cmd.netns_list():
        ns_key = host.key_of_netns(name)
        if ns_key is not None and ns_key not in keep_ns:
            cmd.run("ip", "netns", "del", name)
            report.changes.append(f"namespace {name} removed")
    # Ports and sub-interfaces first, bridges last (a bridge's ports are released with it).
    for prefix in (*types.DEVICE_PREFIXES[1:], types.BRIDGE_PREFIX):
        for name in links.names():
            if name.startswith(prefix) and name not in keep_devices and links.delete(name):
                report.changes.append(f"link {name} removed")
    for family, table in nat.tables():
        if table.startswith(nat.PREFIX) and table.removeprefix(nat.PREFIX) not in keep_keys:
            nat.delete(family, table)
            report.changes.append(f"table {family} {table} removed")
