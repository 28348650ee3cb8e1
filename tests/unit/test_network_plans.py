"""The agent's network plans and guest-side data, without touching the host: plan validation
and device names, dnsmasq's command line and static leases, the NIC's domain XML, and
``network_data.json`` read back by the test guest's own parser (busybox awk)."""

from __future__ import annotations

import ipaddress
import json
import pathlib
import shutil
import subprocess

import pydantic
import pytest

from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import dhcp, guestdata, types
from kubenova_devenv import guestimage

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


def tenant(**kw: object) -> types.NetworkPlan:
    base: dict[str, object] = {
        "key": "abc123",
        "subnet": {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "mtu": 1500},
        "segment": {"vni": 77, "peers": ["192.0.2.10"]},
    }
    base.update(kw)
    return types.NetworkPlan.model_validate(base)


def test_tenant_plan_names_and_mtu() -> None:
    plan = tenant()
    assert (plan.bridge, plan.vxlan, plan.tap) == ("brkabc123", "vxk-77", "tapkabc123")
    assert all(len(n) <= 15 for n in (plan.bridge, plan.vxlan, plan.tap, plan.egress_host_end))
    assert plan.guest_mtu == 1450, "a VXLAN overlay on a 1500-byte underlay"
    assert plan.server_address == A("10.0.0.1")
    assert plan.server_mac("h1") == plan.server_mac("h2"), "one gateway MAC on every host"
    assert plan.egress_pair() == (A("169.254.0.154"), A("169.254.0.155"))


def test_provider_plan_has_a_dhcp_port_per_host() -> None:
    plan = types.NetworkPlan(
        key="p1", subnet=types.Subnet(cidr=N("10.5.0.0/24")),
        segment=types.Provider(physnet="lan", vlan=12), dhcp_address=A("10.5.0.3"),
    )  # fmt: skip
    assert plan.guest_mtu == 1500 and plan.server_address == A("10.5.0.3")
    assert plan.server_mac("h1") != plan.server_mac("h2")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"subnet": {"cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}}, "outside"),
        ({"subnet": {"cidr": "10.0.0.0/24"}}, "needs a gateway"),
        ({"key": "Not-OK"}, "pattern"),
        ({"segment": {"vni": 0}}, "greater than or equal"),
        ({"ports": [{"mac": "fa:16:3e:00:00:01", "ip": "10.9.0.1"}]}, "outside"),
        ({"segment": {"physnet": "lan"}, "egress": True, "dhcp_address": "10.0.0.3"}, "egress"),
    ],
)
def test_inconsistent_plans_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=words):
        tenant(**change)


def test_dnsmasq_answers_only_known_macs_with_router_dns_and_mtu() -> None:
    plan = tenant(
        subnet={"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "dns": ["10.0.0.53"]},
        ports=[{"mac": "fa:16:3e:00:00:02", "ip": "10.0.0.12", "hostname": "b"},
               {"mac": "fa:16:3e:00:00:01", "ip": "10.0.0.11"}],
    )  # fmt: skip
    argv = dhcp.argv(plan, pathlib.Path("/state/abc123"))
    assert "--dhcp-ignore=tag:!known" in argv and "--port=0" in argv
    assert "--dhcp-option=option:router,10.0.0.1" in argv
    assert "--dhcp-option=option:dns-server,10.0.0.53" in argv
    assert "--dhcp-option=option:mtu,1450" in argv
    assert "--dhcp-range=set:net,10.0.0.0,static,255.255.255.0,12h" in argv
    assert dhcp.hosts_text(plan) == "fa:16:3e:00:00:01,10.0.0.11\nfa:16:3e:00:00:02,10.0.0.12,b\n"


def test_interface_xml_round_trip() -> None:
    nic = domain_xml.Interface(mac="fa:16:3e:00:00:01", bridge="brkabc123", mtu=1450)
    el = domain_xml.interface_element(nic)
    assert el.get("type") == "bridge"
    assert el.find("source").get("bridge") == "brkabc123"  # type: ignore[union-attr]
    assert el.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    cfg = domain_xml.DomainConfig(
        owner=domain_xml.Owner("ns", "web", "00000000-0000-0000-0000-000000000001"),
        virt_type=domain_xml.VirtType.qemu, vcpus=1, memory_mib=64, disks=(),
        console_log="/tmp/c.log",
        interfaces=(nic, domain_xml.Interface("fa:16:3e:00:00:02", "br0")),
    )  # fmt: skip
    assert domain_xml.interfaces_of(domain_xml.build_domain_xml(cfg)) == [
        nic,
        domain_xml.Interface("fa:16:3e:00:00:02", "br0"),
    ]


def nics() -> list[guestdata.Nic]:
    return [
        guestdata.Nic(port_id="uid-1/0", network_id="net-a", mac="fa:16:3e:00:00:01",
                      ip=A("10.0.0.11"), cidr=N("10.0.0.0/24"), gateway=A("10.0.0.1"),
                      dns=(A("10.0.0.53"),), mtu=1450),
        guestdata.Nic(port_id="uid-1/1", network_id="net-b", mac="fa:16:3e:00:00:02",
                      ip=A("10.5.0.20"), cidr=N("10.5.0.0/24"), mtu=1500, dhcp=True),
    ]  # fmt: skip


def test_network_data_is_novas_format() -> None:
    data = guestdata.network_data(nics())
    assert [link["ethernet_mac_address"] for link in data["links"]] == [
        "fa:16:3e:00:00:01",
        "fa:16:3e:00:00:02",
    ]
    first, second = data["networks"]
    assert first["type"] == "ipv4" and first["ip_address"] == "10.0.0.11"
    assert first["netmask"] == "255.255.255.0" and first["link"] == data["links"][0]["id"]
    default = {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}
    assert first["routes"] == [default]
    assert second["type"] == "ipv4_dhcp" and "ip_address" not in second
    assert data["services"] == [{"type": "dns", "address": "10.0.0.53"}]


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static (hack/setup.sh)")
@pytest.mark.parametrize(
    ("mac", "expected"),
    [
        ("fa:16:3e:00:00:01", "ipv4 10.0.0.11 255.255.255.0 10.0.0.1 1450"),
        ("fa:16:3e:00:00:02", "ipv4_dhcp - 1500"),
        ("fa:16:3e:00:00:09", ""),
    ],
)
def test_the_test_guest_reads_what_the_agent_writes(mac: str, expected: str) -> None:
    text = json.dumps(guestdata.network_data(nics()))
    lines = subprocess.run(["tr", "{}[],", "\n\n\n\n\n"], input=text, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    awk = ["busybox", "awk", "-v", f"mac={mac}", guestimage.NETDATA_AWK]
    out = subprocess.run(awk, input=lines, capture_output=True, text=True, check=True).stdout
    assert " ".join(out.split()) == expected
