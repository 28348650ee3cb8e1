"""The network plumbing with real guests before kubenova drives it: three libvirtd + QEMU hosts,
each in its own network namespace, their networking set by the agent's own network package and
the guests defined from the agent's own domain XML builder with a config drive carrying
``network_data.json`` (no controller, no API server).

* g1 (host-a) and g2 (host-b) on tenant network T1 (VXLAN, egress on) reach each other across
  hosts; g1 is configured only by ``network_data.json`` (no DHCP entry exists for it), g2 only
  by DHCP (its ``network_data.json`` says ``ipv4_dhcp``).
* g3 (host-a, same host as g1) on tenant network T2 with the same CIDR and no egress reaches
  its own gateway but neither g1, g2 nor the outside.
* g1 reaches the "outside" namespace through SNAT (egress on).
* g4 (host-c) on the provider network (the LAN) gets its address by DHCP and answers HTTP from
  the "client" namespace on the LAN.
* g2 moves live from host-b to host-c while g1 pings it every 0.1 s: same IP and MAC, still
  reached, packets lost counted (printed).
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import guestdata, types
from kubenova_devenv import netlab
from tests.e2e.helpers import FETCH, REACH

pytestmark = [pytest.mark.libvirtd, pytest.mark.timeout(600)]

CIDR = ipaddress.IPv4Network("192.168.100.0/24")
GATEWAY = CIDR.network_address + 1
IP = {
    "g1": CIDR.network_address + 11,
    "g2": CIDR.network_address + 12,
    "g3": CIDR.network_address + 13,
}
MAC = {"g1": "fa:16:3e:00:01:11", "g2": "fa:16:3e:00:01:12", "g3": "fa:16:3e:00:02:13",
       "g4": "fa:16:3e:00:03:14"}  # fmt: skip


def subnet(
    cidr: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address | None, mtu: int
) -> types.Subnet:
    return types.Subnet(cidr=cidr, gateway=gateway, mtu=mtu)


class Nets:
    """The lab's networks and what each host should have for them."""

    def __init__(self, lab: netlab.NetLab) -> None:
        assert lab.bed.lan is not None
        self.lab = lab
        self.lan = lab.bed.lan
        self.g4_ip = self.lan.network_address + 20
        self.t1 = dict(key="tnet1", subnet=subnet(CIDR, GATEWAY, 1450), egress=True)
        self.t2 = dict(key="tnet2", subnet=subnet(CIDR, GATEWAY, 1450), egress=False)

    def underlay(self, host: str) -> ipaddress.IPv4Address:
        return self.lab.bed.hosts[host].underlay_address

    def tenant(self, spec: dict, vni: int, peers: list[str], ports: list[str]) -> types.NetworkPlan:
        return types.NetworkPlan(
            key=spec["key"], subnet=spec["subnet"], egress=spec["egress"],
            segment=types.Overlay(vni=vni, peers=frozenset(self.underlay(p) for p in peers)),
            ports=tuple(types.Port(mac=MAC[g], ip=IP[g], hostname=g) for g in ports),
        )  # fmt: skip

    def provider(self, host_index: int, ports: list[str]) -> types.NetworkPlan:
        return types.NetworkPlan(
            key="pnet",
            subnet=subnet(self.lan, None, 1500),
            segment=types.Provider(physnet="lan"),
            dhcp_address=self.lan.network_address + 5 + host_index,
            ports=tuple(types.Port(mac=MAC[g], ip=self.g4_ip, hostname=g) for g in ports),
        )

    def nic(
        self, guest: str, plan: types.NetworkPlan, dhcp: bool, ip: ipaddress.IPv4Address
    ) -> netlab.GuestNic:
        return netlab.GuestNic(
            bridge=plan.bridge,
            data=guestdata.Nic(
                port_id=f"port-{guest}", network_id=plan.key, mac=MAC[guest], ip=ip,
                cidr=plan.subnet.cidr, gateway=plan.subnet.gateway, mtu=plan.guest_mtu, dhcp=dhcp,
            ),
        )  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[netlab.NetLab, Nets]]:
    with netlab.NetLab(pathlib.Path(tmp_path_factory.mktemp("netlab"))) as lab:
        nets = Nets(lab)
        out = str(lab.bed.outside_address)
        # host-a: g1 (T1, static: no DHCP entry) and g3 (T2); host-b: g2 (T1, DHCP); host-c: g4.
        t1_a = nets.tenant(nets.t1, 1001, ["host-b"], [])
        t1_b = nets.tenant(nets.t1, 1001, ["host-a"], ["g2"])
        t2_a = nets.tenant(nets.t2, 1002, [], [])
        p_c = nets.provider(2, ["g4"])
        lab.apply("host-a", [t1_a, t2_a])
        lab.apply("host-b", [t1_b])
        lab.apply("host-c", [p_c])
        lab.boot("g1", "host-a", [nets.nic("g1", t1_a, False, IP["g1"])], REACH + (
            f"reach outside {out} 60 &\n"
            f"reach other-net {IP['g3']} 20 &\n"
            f"reach g2 {IP['g2']} 120 && exec ping -i 0.1 {IP['g2']}\n"
        ))  # fmt: skip
        lab.boot("g2", "host-b", [nets.nic("g2", t1_b, True, IP["g2"])], REACH + (
            f"reach g1 {IP['g1']} 120\n"
        ))  # fmt: skip
        lab.boot("g3", "host-a", [nets.nic("g3", t2_a, False, IP["g3"])], REACH + (
            f"reach gateway {GATEWAY} 60 &\n"
            f"reach outside {out} 30 &\n"
            f"reach g1 {IP['g1']} 30 &\n"
            f"reach g2 {IP['g2']} 30 &\n"
        ))  # fmt: skip
        lab.boot("g4", "host-c", [nets.nic("g4", p_c, True, nets.g4_ip)])
        yield lab, nets


def reach(lab: netlab.NetLab, guest: str, target: str, timeout: float = 180) -> str:
    return lab.wait_console(
        lab.guests[guest], rf"kubenova-reach {target} (ok|fail)", timeout
    ).group(1)


def test_tenant_network_spans_hosts_over_vxlan(lab: tuple[netlab.NetLab, Nets]) -> None:
    netlab_, _ = lab
    assert reach(netlab_, "g1", "g2") == "ok"
    assert reach(netlab_, "g2", "g1") == "ok"


def test_a_second_tenant_network_with_the_same_cidr_is_isolated(
    lab: tuple[netlab.NetLab, Nets],
) -> None:
    netlab_, _ = lab
    assert reach(netlab_, "g3", "gateway") == "ok", "T2 itself works (its own gateway answers)"
    assert reach(netlab_, "g3", "g1") == "fail"
    assert reach(netlab_, "g3", "g2") == "fail"
    assert reach(netlab_, "g1", "other-net") == "fail"


def test_egress_on_reaches_the_outside_and_off_does_not(lab: tuple[netlab.NetLab, Nets]) -> None:
    netlab_, _ = lab
    assert reach(netlab_, "g1", "outside") == "ok"
    assert reach(netlab_, "g3", "outside") == "fail"


def test_dhcp_and_config_drive_each_configure_a_guest(lab: tuple[netlab.NetLab, Nets]) -> None:
    netlab_, nets = lab
    seen = {}
    for guest, source, ip in (("g1", "config-drive", IP["g1"]), ("g2", "dhcp", IP["g2"]),
                              ("g4", "dhcp", nets.g4_ip)):  # fmt: skip
        line = netlab_.wait_console(
            netlab_.guests[guest], r"kubenova-net eth0 (\S+) mac=(\S+) gw=(\S*) mtu=(\S*) "
            r"source=(\S+) uptime=(\S+)", 120,
        )  # fmt: skip
        assert line.group(1).split("/")[0] == str(ip), line.group(0)
        assert line.group(2) == MAC[guest]
        assert line.group(5) == source, line.group(0)
        seen[guest] = float(line.group(6))
        if guest != "g4":
            assert line.group(3) == str(GATEWAY) and line.group(4) == "1450", line.group(0)
    print(f"boot to network (guest uptime, s): {json.dumps(seen)}")


def test_provider_network_guest_answers_tcp_from_the_lan(lab: tuple[netlab.NetLab, Nets]) -> None:
    netlab_, nets = lab
    client = netlab_.bed.client
    argv = ["ip", "-n", client, "-j", "route", "get", str(nets.g4_ip)]
    route = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)[0]
    assert route["dev"] == "eth0" and "gateway" not in route, route
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        last = netlab_.run_in(client, sys.executable, "-c", FETCH, f"http://{nets.g4_ip}/")
        if last.returncode == 0:
            break
        time.sleep(1)
    assert last is not None and last.stdout.strip() == "kubenova-www g4", last


def test_live_migration_keeps_address_and_peer_reach(lab: tuple[netlab.NetLab, Nets]) -> None:
    netlab_, nets = lab
    g1, g2 = netlab_.guests["g1"], netlab_.guests["g2"]
    assert reach(netlab_, "g1", "g2") == "ok"
    netlab_.wait_console(g1, r"seq=\d+ ttl", 60)
    # The target joins T1 first (its port, flooding to both hosts); then the move.
    netlab_.apply(
        "host-c",
        [nets.provider(2, ["g4"]), nets.tenant(nets.t1, 1001, ["host-a", "host-b"], ["g2"])],
    )
    netlab_.apply("host-a", [nets.tenant(nets.t1, 1001, ["host-b", "host-c"], []),
                             nets.tenant(nets.t2, 1002, [], [])])  # fmt: skip
    netlab_.apply("host-b", [nets.tenant(nets.t1, 1001, ["host-a", "host-c"], ["g2"])])
    time.sleep(2)
    offset = len(g1.text())
    uptime_before = max(float(u) for u in re.findall(r"kubenova-uptime (\S+)", g2.text()))
    seconds = netlab_.migrate(g2, "host-c")
    # host-b leaves T1 (nothing of it runs there any more); the others stop flooding to it.
    changes_b = netlab_.apply("host-b", [])
    changes_a = netlab_.apply("host-a", [nets.tenant(nets.t1, 1001, ["host-c"], []),
                                         nets.tenant(nets.t2, 1002, [], [])])  # fmt: skip
    netlab_.apply(
        "host-c", [nets.provider(2, ["g4"]), nets.tenant(nets.t1, 1001, ["host-a"], ["g2"])]
    )
    assert any("removed" in c for c in changes_b), changes_b
    assert any("flood to" in c and "removed" in c for c in changes_a), changes_a
    time.sleep(8)
    after = g1.text()[offset:]
    seqs = [int(s) for s in re.findall(r"seq=(\d+) ttl", after)]
    assert len(seqs) > 50, after[-2000:]
    expected = range(seqs[0], seqs[-1] + 1)
    lost = sorted(set(expected) - set(seqs))
    gap, run, prev = 0, 0, None
    for s in lost:
        run = run + 1 if prev is not None and s == prev + 1 else 1
        gap, prev = max(gap, run), s
    print(f"live migration: {seconds:.2f}s, {len(expected)} pings at 0.1 s, lost {len(lost)} "
          f"(longest gap {gap * 0.1:.1f} s)")  # fmt: skip
    assert seqs[-1] - seqs[0] > 60, "the peer kept getting replies after the move"
    assert len(lost) < 50, f"lost {len(lost)} of {len(expected)}: {lost}"
    # Same MAC on the target, the guest did not reboot, and it is still reached.
    xml = netlab_.hosts["host-c"].virsh("dumpxml", domain_xml.domain_name(g2.uid))
    assert [n.mac for n in domain_xml.interfaces_of(xml)] == [MAC["g2"]]
    uptime_after = max(float(u) for u in re.findall(r"kubenova-uptime (\S+)", g2.text()))
    assert uptime_after > uptime_before
    assert g2.text().count("KUBENOVA-GUEST-UP") == 1
