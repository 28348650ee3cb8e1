"""Links of a host: bridges, VXLAN devices, veth pairs, VLAN sub-interfaces and the VXLAN
flood entries (l2population). Every function is idempotent: it reads what is there and changes
only the difference, so a reconcile can run it again at any time."""

from __future__ import annotations

import ipaddress
from typing import Any

from kubenova_agent.network import cmd

FLOOD_MAC = "00:00:00:00:00:00"


def get(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """``ip -d link show NAME`` as a dict, or None when there is no such link.

    One read, not a check and then a read: a guest's tap goes when libvirt stops the guest,
    and between the two it could be gone (a teardown then failed on "does not exist")."""
    try:
        found = cmd.json_of("ip", "-j", "-d", "link", "show", "dev", name, netns=netns)
    except cmd.CommandFailed:
        if cmd.ok("ip", "link", "show", "dev", name, netns=netns):
            raise  # the link is there: the read failed for another reason
        return None
    return dict(found[0]) if found else None


def names(netns: str | None = None) -> list[str]:
    return [str(link["ifname"]) for link in cmd.json_of("ip", "-j", "link", "show", netns=netns)]


def delete(name: str, netns: str | None = None) -> bool:
    """Delete a link if it exists (a veth's peer goes with it); whether it existed."""
    if get(name, netns) is None:
        return False
    try:
        cmd.run("ip", "link", "del", "dev", name, netns=netns)
    except cmd.CommandFailed:
        # Gone in between (a guest's tap goes when libvirt stops the guest): what was asked.
        if get(name, netns) is not None:
            raise
    return True


def set_up(name: str, mtu: int | None = None, master: str | None = None) -> None:
    """Bring a link up, with its MTU and bridge when given (no change when already so)."""
    link = get(name)
    assert link is not None, name
    args: list[str] = []
    if mtu is not None and link.get("mtu") != mtu:
        args += ["mtu", str(mtu)]
    if master is not None and link.get("master") != master:
        args += ["master", master]
    if "UP" not in link.get("flags", []):
        args += ["up"]
    if args:
        cmd.run("ip", "link", "set", "dev", name, *args)


def ensure_bridge(name: str, mtu: int) -> None:
    """A Linux bridge without STP and without forwarding delay (ports forward at once)."""
    link = get(name)
    if link is not None and link.get("linkinfo", {}).get("info_kind") != "bridge":
        cmd.run("ip", "link", "del", "dev", name)
        link = None
    if link is None:
        cmd.run("ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    set_up(name, mtu=mtu)


def ensure_vxlan(
    name: str, vni: int, local: ipaddress.IPv4Address, device: str, bridge: str, mtu: int
) -> None:
    """A VXLAN device (no multicast group, no learning: the flood list says where to send) in
    ``bridge``. A device with another VNI or endpoint is replaced."""
    link = get(name)
    if link is not None:
        data = link.get("linkinfo", {}).get("info_data", {})
        if (
            link.get("linkinfo", {}).get("info_kind") != "vxlan"
            or data.get("id") != vni
            or data.get("local") != str(local)
            or data.get("learning", False)
        ):
            cmd.run("ip", "link", "del", "dev", name)
            link = None
    if link is None:
        cmd.run(
            "ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", str(local),
            "dstport", "4789", "nolearning", "dev", device,
        )  # fmt: skip
    set_up(name, mtu=mtu, master=bridge)


def flood_peers(vxlan: str) -> set[ipaddress.IPv4Address]:
    """The peers a VXLAN device floods to (its all-zero forwarding entries)."""
    entries = cmd.json_of("bridge", "-j", "fdb", "show", "dev", vxlan)
    return {
        ipaddress.IPv4Address(e["dst"]) for e in entries if e.get("mac") == FLOOD_MAC and "dst" in e
    }


def sync_flood(
    vxlan: str, peers: frozenset[ipaddress.IPv4Address]
) -> tuple[set[ipaddress.IPv4Address], set[ipaddress.IPv4Address]]:
    """Make the flood list of ``vxlan`` exactly ``peers``: (added, removed)."""
    have = flood_peers(vxlan)
    added, removed = set(peers) - have, have - set(peers)
    for peer in sorted(added):
        cmd.run("bridge", "fdb", "append", FLOOD_MAC, "dev", vxlan, "dst", str(peer))
    for peer in sorted(removed):
        cmd.run("bridge", "fdb", "del", FLOOD_MAC, "dev", vxlan, "dst", str(peer))
    return added, removed


def ensure_vlan(name: str, parent: str, vid: int, bridge: str, mtu: int) -> None:
    """A VLAN sub-interface ``name`` of ``parent`` with tag ``vid``, in ``bridge``."""
    link = get(name)
    if link is not None:
        data = link.get("linkinfo", {}).get("info_data", {})
        if data.get("id") != vid or link.get("link") != parent:
            cmd.run("ip", "link", "del", "dev", name)
            link = None
    if link is None:
        try:
            cmd.run(
                "ip", "link", "add", "link", parent, "name", name, "type", "vlan", "id", str(vid)
            )
        except cmd.CommandFailed as exc:
            if "Unknown device type" in exc.stderr:
                raise cmd.CommandFailed(
                    exc.argv, exc.returncode, "this kernel has no 802.1Q VLAN support (8021q)"
                ) from exc
            raise
    set_up(name, mtu=mtu, master=bridge)


def ensure_veth_into(
    host_end: str, netns: str, ns_end: str, mtu: int, ns_mac: str | None = None
) -> None:
    """A veth pair: ``host_end`` here, ``ns_end`` inside ``netns`` (with ``ns_mac``)."""
    if get(host_end) is None or get(ns_end, netns) is None:
        delete(host_end)
        delete(ns_end, netns)
        cmd.run(
            "ip", "link", "add", host_end, "mtu", str(mtu), "type", "veth",
            "peer", "name", ns_end, "mtu", str(mtu), "netns", netns,
        )  # fmt: skip
    if ns_mac is not None:
        link = get(ns_end, netns)
        if link is not None and link.get("address") != ns_mac:
            cmd.run("ip", "link", "set", "dev", ns_end, "address", ns_mac, netns=netns)
    cmd.run("ip", "link", "set", "dev", ns_end, "mtu", str(mtu), "up", netns=netns)


def ensure_address(device: str, interface: ipaddress.IPv4Interface, netns: str | None) -> None:
    """``device`` carries exactly this IPv4 address."""
    have = {
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for link in cmd.json_of("ip", "-j", "-4", "addr", "show", "dev", device, netns=netns)
        for a in link.get("addr_info", [])
    }
    for other in have - {interface}:
        cmd.run("ip", "addr", "del", str(other), "dev", device, netns=netns)
    if interface not in have:
        cmd.run("ip", "addr", "add", str(interface), "dev", device, netns=netns)


def bridges_named(prefix: str) -> list[str]:
    """Bridges of this host whose names start with ``prefix``."""
    found = cmd.json_of("ip", "-j", "link", "show", "type", "bridge")
    return [str(link["ifname"]) for link in found if str(link["ifname"]).startswith(prefix)]
