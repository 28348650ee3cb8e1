"""nftables of a host's networks, one table per network and family, named ``knv-<key>``, each
replaced whole in one transaction (``nft -f``), so a rule set is never half applied:

* ``bridge knv-<key>`` (tenant networks): the gateway's MAC, the same on every host, never
  crosses the VXLAN device — each guest talks to the router of the host it runs on, and no
  bridge learns that MAC on the tunnel port (a distributed router, as Neutron's DVR).
* ``ip knv-<key>`` (tenant networks with egress): SNAT of the namespace's egress link to the
  underlay, and nothing from that link may reach the host itself, any other link, or the
  destinations the host denies (the underlay's own subnet: other hosts' libvirtd, kubelet).
* ``ip kubenova`` inside the network's namespace: SNAT of the guests to the egress link.
"""

from __future__ import annotations

import ipaddress

from kubenova_agent.network import cmd, types

PREFIX = "knv-"


def _replace(family: str, table: str, body: str, netns: str | None = None) -> None:
    script = (
        f"table {family} {table} {{}}\n"
        f"delete table {family} {table}\n"
        f"table {family} {table} {{\n{body}}}\n"
    )
    cmd.run("nft", "-f", "-", stdin=script, netns=netns)


def delete(family: str, table: str, netns: str | None = None) -> None:
    cmd.run("nft", "-f", "-", stdin=f"table {family} {table} {{}}\ndelete table {family} {table}\n",
            netns=netns)  # fmt: skip


def tables(netns: str | None = None) -> list[tuple[str, str]]:
    """(family, name) of every nftables table (of a namespace)."""
    found = cmd.json_of("nft", "-j", "list", "tables", netns=netns)
    return [
        (str(item["table"]["family"]), str(item["table"]["name"]))
        for item in (found.get("nftables", []) if isinstance(found, dict) else [])
        if "table" in item
    ]


def ensure_gateway_guard(plan: types.NetworkPlan, host_name: str) -> None:
    mac = plan.server_mac(host_name)
    _replace(
        "bridge",
        PREFIX + plan.key,
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f'    oifname "{plan.vxlan}" ether saddr {mac} drop\n'
        f'    iifname "{plan.vxlan}" ether saddr {mac} drop\n'
        f'    iifname "{plan.vxlan}" ether daddr {mac} drop\n'
        f'    oifname "{plan.vxlan}" ether daddr {mac} drop\n'
        "  }\n",
    )


def ensure_host_egress(
    plan: types.NetworkPlan,
    underlay_device: str,
    deny: tuple[ipaddress.IPv4Network, ...] = (),
) -> None:
    _host, ns_end = plan.egress_pair()
    link = plan.egress_host_end
    denied = (
        f'    iifname "{link}" ip daddr {{ {", ".join(map(str, deny))} }} drop\n' if deny else ""
    )
    _replace(
        "ip",
        PREFIX + plan.key,
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {ns_end} oifname "{underlay_device}" masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f'    iifname "{link}" oifname != "{underlay_device}" drop\n'
        f'    iifname "{link}" ip saddr != {ns_end} drop\n'
        f"{denied}"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f'    iifname "{link}" drop\n'
        "  }\n",
    )


def ensure_namespace_egress(plan: types.NetworkPlan, netns: str) -> None:
    _replace(
        "ip",
        "kubenova",
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {plan.subnet.cidr} oifname "{types.NS_EGRESS}" masquerade\n'
        "  }\n",
        netns=netns,
    )
