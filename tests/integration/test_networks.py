"""Networks in the controller against the real API server, on simulated hosts (real Agents on
libvirt's test driver; they publish a tunnel address and physical network ``lan`` but plumb
nothing): a VNI per Network, a default Network per namespace, addresses written with the
binding and shown in a column, refusals of a fixedIP that name why (and the holder of a taken
one), a missing network waited for, a network in use held from deletion with the users named,
and a provider network that no host carries left Unschedulable naming NetworkFilter."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(300)

NS = "nets"
G = "compute.kubenova.io/v1alpha1"


@pytest.fixture(scope="module")
def sims(api: stack.Stack) -> Iterator[stack.Stack]:
    api.start_controller()
    proc = api.start_sim_fleet(2, cpus=8, memory_mib=4096, heartbeat=3.0, networks=True)
    eventually(
        lambda: api.kubectl("get", "hv", "-o", "name").stdout.count("/sim-0") >= 2,
        90,
        what="the simulated Hypervisors",
    )
    docs = [
        {"apiVersion": G, "kind": "Flavor", "metadata": {"name": "net.small"},
         "spec": {"vcpus": 1, "memoryMiB": 64, "diskGiB": 1}},
        api.image_manifest("net-image", with_disk=False, architecture="i686"),
    ]  # fmt: skip
    api.kubectl("create", "namespace", NS)
    _apply(api, *docs)
    yield api
    api.kubectl("delete", "srv", "--all", "-n", NS, "--timeout=60s", timeout=90, check=False)
    proc.stop()
    assert api.controller is not None
    api.controller.stop()
    api.kubectl("delete", "hv", "sim-000", "sim-001")


def _apply(api: stack.Stack, *docs: dict[str, Any]) -> None:
    api.kubectl("apply", "-f", "-", stdin="---\n".join(yaml.safe_dump(d) for d in docs))


def _network(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": G, "kind": "Network", "metadata": {"name": name, "namespace": NS},
            "spec": {"cidr": cidr, **spec}}  # fmt: skip


def _server(name: str, networks: list[dict[str, Any]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"flavorRef": "net.small", "imageRef": "net-image"}
    if networks is not None:
        spec["networks"] = networks
    return {"apiVersion": G, "kind": "Server", "metadata": {"name": name, "namespace": NS},
            "spec": spec}  # fmt: skip


def _get(api: stack.Stack, kind: str, name: str, namespaced: bool = True) -> dict[str, Any]:
    where = ["-n", NS] if namespaced else []
    out = api.kubectl("get", kind, name, *where, "-o", "yaml", check=False)
    return yaml.safe_load(out.stdout) if out.returncode == 0 else {}


def _scheduled(api: stack.Stack, name: str, reason: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        cond = condition(_get(api, "srv", name), "Scheduled")
        return cond if cond.get("reason") == reason else None

    found: dict[str, Any] = eventually(seen, 30, what=f"Server {name} Scheduled={reason}")
    return found


def _bound(api: stack.Stack, name: str) -> list[dict[str, Any]]:
    def seen() -> tuple[list[dict[str, Any]]] | None:
        status = _get(api, "srv", name).get("status") or {}
        return (status.get("addresses") or [],) if status.get("nodeName") else None

    found: tuple[list[dict[str, Any]]] = eventually(seen, 30, what=f"Server {name} bound")
    return found[0]


def test_vni_default_network_addresses_and_column(sims: stack.Stack) -> None:
    _apply(sims, _network("blue", "10.20.0.0/24", default=True), _network("red", "10.20.0.0/24"))
    vnis = [
        eventually(lambda n=n: (_get(sims, "network", n).get("status") or {}).get("vni"), 30,
                   what=f"a VNI for {n}")
        for n in ("blue", "red")
    ]  # fmt: skip
    assert vnis[0] != vnis[1], vnis
    _apply(sims, _server("auto", None), _server("none", []),
           _server("two", [{"networkRef": "red"}, {"networkRef": "blue"}]))  # fmt: skip
    (auto,) = _bound(sims, "auto")
    assert auto["network"] == "blue" and auto["ip"] == "10.20.0.2", auto
    assert auto["mac"].startswith("fa:16:3e:")
    assert _bound(sims, "none") == []
    two = _bound(sims, "two")
    assert [a["network"] for a in two] == ["red", "blue"], two
    assert two[0]["ip"] == "10.20.0.2" and two[1]["ip"] == "10.20.0.3", two
    table = sims.kubectl("get", "srv", "auto", "-n", NS).stdout
    assert "ADDRESS" in table and "10.20.0.2" in table, table
    # The hosts that run a network's Servers are listed with their tunnel addresses.
    hosts = eventually(
        lambda: (_get(sims, "network", "blue").get("status") or {}).get("hosts"), 30,
        what="blue's hosts",
    )  # fmt: skip
    assert all(h["tunnelAddress"].startswith("127.77.") for h in hosts), hosts
    sims.kubectl("delete", "srv", "auto", "none", "two", "-n", NS, "--timeout=60s", timeout=90)


@pytest.mark.parametrize(
    ("fixed", "reason", "words"),
    [
        ("10.30.0.200", "FixedIPIsGateway", "gateway"),
        ("10.30.0.255", "FixedIPIsBroadcastAddress", "broadcast"),
        ("10.30.0.0", "FixedIPIsNetworkAddress", "network address"),
        ("10.31.0.5", "FixedIPOutsideSubnet", "outside"),
    ],
)
def test_fixed_ip_refusals_name_why(sims: stack.Stack, fixed: str, reason: str, words: str) -> None:
    _apply(sims, _network("green", "10.30.0.0/24", gateway="10.30.0.200"))
    name = "bad-" + fixed.replace(".", "-")
    _apply(sims, _server(name, [{"networkRef": "green", "fixedIP": fixed}]))
    cond = _scheduled(sims, name, reason)
    assert fixed in cond["message"] and words in cond["message"], cond
    assert cond["status"] == "False"
    sims.kubectl("delete", "srv", name, "-n", NS, "--timeout=60s", timeout=90)


def test_taken_fixed_ip_names_the_holder_and_binds_when_freed(sims: stack.Stack) -> None:
    _apply(sims, _network("green", "10.30.0.0/24", gateway="10.30.0.200"))
    _apply(sims, _server("holder", [{"networkRef": "green", "fixedIP": "10.30.0.5"}]))
    assert _bound(sims, "holder")[0]["ip"] == "10.30.0.5"
    _apply(sims, _server("wants", [{"networkRef": "green", "fixedIP": "10.30.0.5"}]))
    cond = _scheduled(sims, "wants", "FixedIPTaken")
    assert f"Server {NS}/holder" in cond["message"], cond
    sims.kubectl("delete", "srv", "holder", "-n", NS, "--timeout=60s", timeout=90)
    assert _bound(sims, "wants")[0]["ip"] == "10.30.0.5"


def test_missing_network_waits_then_binds(sims: stack.Stack) -> None:
    _apply(sims, _server("early", [{"networkRef": "later"}]))
    cond = _scheduled(sims, "early", "NetworkNotFound")
    assert "later" in cond["message"], cond
    _apply(sims, _network("later", "10.40.0.0/28"))
    (address,) = _bound(sims, "early")
    assert ipaddress.IPv4Address(address["ip"]) in ipaddress.IPv4Network("10.40.0.0/28")


def test_deleting_a_network_in_use_waits_for_its_servers(sims: stack.Stack) -> None:
    _apply(sims, _network("busy", "10.50.0.0/24"), _server("user", [{"networkRef": "busy"}]))
    _bound(sims, "user")
    sims.kubectl("delete", "network", "busy", "-n", NS, "--wait=false")

    def held() -> dict[str, Any] | None:
        cond = condition(_get(sims, "network", "busy"), "Ready")
        return cond if cond.get("reason") == "InUse" else None

    cond = eventually(held, 30, what="busy held InUse")
    assert f"{NS}/user" in cond["message"], cond
    events = sims.kubectl("get", "events", "-n", NS, "--field-selector",
                          "involvedObject.name=busy").stdout  # fmt: skip
    assert "NetworkInUse" in events, events
    assert (_get(sims, "srv", "user").get("status") or {}).get("addresses")
    sims.kubectl("delete", "srv", "user", "-n", NS, "--timeout=60s", timeout=90)
    eventually(lambda: _get(sims, "network", "busy") == {}, 30, what="busy gone")


def test_provider_networks_need_a_host_that_maps_them(sims: stack.Stack) -> None:
    lan = {
        "apiVersion": G,
        "kind": "ProviderNetwork",
        "metadata": {"name": "it-lan"},
        "spec": {"physicalNetwork": "lan", "cidr": "10.60.0.0/24", "gateway": "10.60.0.1"},
    }
    dc2 = {"apiVersion": G, "kind": "ProviderNetwork", "metadata": {"name": "it-dc2"},
           "spec": {"physicalNetwork": "dc2", "cidr": "10.61.0.0/24"}}  # fmt: skip
    _apply(sims, lan, dc2)
    _apply(sims, _server("far", [{"networkRef": "it-dc2", "kind": "ProviderNetwork"}]),
           _server("near", [{"networkRef": "it-lan", "kind": "ProviderNetwork"}]))  # fmt: skip
    cond = _scheduled(sims, "far", "Unschedulable")
    assert "NetworkFilter" in cond["message"] and "'dc2'" in cond["message"], cond
    (address,) = _bound(sims, "near")
    pnet = eventually(
        lambda: [h for h in (_get(sims, "providernetwork", "it-lan", False).get("status") or {})
                 .get("hosts", []) if h.get("dhcpAddress")], 30, what="a DHCP address",
    )  # fmt: skip
    assert address["ip"] not in {h["dhcpAddress"] for h in pnet}, (address, pnet)
    sims.kubectl("delete", "srv", "far", "near", "-n", NS, "--timeout=60s", timeout=90)
    sims.kubectl("delete", "providernetwork", "it-lan", "it-dc2", "--timeout=60s", timeout=90)
