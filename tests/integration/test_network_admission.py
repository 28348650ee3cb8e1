"""Networks at admission: the API server refuses what the schema can state (CIDR syntax and
host bits, prefix range, a gateway outside the CIDR or on its network/broadcast address, pools
outside the CIDR or around the gateway, VLAN range, a non-IPv4 fixedIP or DNS server) with a
message a person can act on, stores nothing, and shows useful columns."""

from __future__ import annotations

import pytest
import yaml

from kubenova_api import networks
from kubenova_devenv import stack
from tests.conftest import delete_unheld

pytestmark = pytest.mark.timeout(120)


def _apply(api: stack.Stack, body: dict) -> tuple[int, str]:
    out = api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body), check=False)
    return out.returncode, out.stderr


def _net(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Network",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _pnet(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ProviderNetwork",
        "metadata": {"name": name},
        "spec": {"physicalNetwork": "lan", **spec},
    }


def _server(name: str, nets: list | None) -> dict:
    spec: dict = {"flavorRef": "m1.tiny", "imageRef": "cirros"}
    if nets is not None:
        spec["networks"] = nets
    return {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


POOL_MSG = "every allocation pool must lie inside cidr"
GW_MSG = "gateway must be an IPv4 address inside cidr"
CIDR_MSG = "cidr must be an IPv4 network in CIDR notation"
CASES = [
    (_net("bad-cidr", cidr="10.0.0.0/33"), CIDR_MSG),
    (_net("not-a-cidr", cidr="banana"), CIDR_MSG),
    (_net("host-bits", cidr="10.0.0.5/24"), CIDR_MSG),
    (_net("ipv6", cidr="fd00::/64"), CIDR_MSG),
    (_net("too-small", cidr="10.0.0.0/31"), "prefix length must be between /8 and /30"),
    (_net("gw-outside", cidr="10.0.0.0/24", gateway="10.0.1.1"), GW_MSG),
    (_net("gw-network", cidr="10.0.0.0/24", gateway="10.0.0.0"), GW_MSG),
    (_net("gw-broadcast", cidr="10.0.0.0/24", gateway="10.0.0.255"), GW_MSG),
    (_net("gw-broadcast-28", cidr="10.0.0.16/28", gateway="10.0.0.31"), GW_MSG),
    (_net("gw-junk", cidr="10.0.0.0/24", gateway="10.0.0"), GW_MSG),
    (_net("pool-out", cidr="10.0.0.0/24",
          allocationPools=[{"start": "10.0.0.10", "end": "10.0.1.20"}]), POOL_MSG),
    (_net("pool-backwards", cidr="10.0.0.0/24",
          allocationPools=[{"start": "10.0.0.20", "end": "10.0.0.10"}]), POOL_MSG),
    (_net("pool-gw", cidr="10.0.0.0/24", gateway="10.0.0.15",
          allocationPools=[{"start": "10.0.0.10", "end": "10.0.0.20"}]),
     "the gateway must not be inside an allocation pool"),
    (_net("dns-junk", cidr="10.0.0.0/24", dnsNameservers=["dns.example"]),
     "DNS servers must be IPv4"),
    (_pnet("vlan-0", cidr="10.0.0.0/24", vlanID=0), "should be greater than or equal to 1"),
    (_pnet("vlan-4095", cidr="10.0.0.0/24", vlanID=4095), "should be less than or equal to 4094"),
    (_pnet("no-physnet", cidr="10.0.0.0/24", physicalNetwork=""), "physicalNetwork"),
    (_server("bad-fixed", [{"networkRef": "net-x", "fixedIP": "10.0.0.300"}]),
     "fixedIP must be an IPv4 address"),
    (_server("bad-kind", [{"networkRef": "net-x", "kind": "Subnet"}]), "Unsupported value"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), CASES)
def test_invalid_networks_are_refused_with_a_readable_message(
    api: stack.Stack, body: dict, message: str
) -> None:
    code, stderr = _apply(api, body)
    assert code != 0
    assert message in stderr, stderr
    args = ["get", body["kind"].lower(), body["metadata"]["name"]]
    if "namespace" in body["metadata"]:
        args += ["-n", "default"]
    assert "NotFound" in api.kubectl(*args, check=False).stderr


def test_valid_networks_are_stored_and_shown(api: stack.Stack) -> None:
    ok = _net("tenant-ok", cidr="10.0.0.16/28", gateway="10.0.0.17", egress=True,
              allocationPools=[{"start": "10.0.0.20", "end": "10.0.0.30"}],
              dnsNameservers=["10.0.0.17"])  # fmt: skip
    assert _apply(api, ok) == (0, "")
    assert _apply(api, _pnet("lan-ok", cidr="192.168.10.0/24", gateway="192.168.10.1",
                             vlanID=12))[0] == 0  # fmt: skip
    header = api.kubectl("get", "net", "-n", "default").stdout.splitlines()[0]
    for column in ("CIDR", "GATEWAY", "EGRESS", "VNI"):
        assert column in header
    assert "PHYSICAL" in api.kubectl("get", "pnet").stdout.splitlines()[0]
    # The same rules hold for Python code that builds these objects.
    networks.NetworkSpec.model_validate(ok["spec"])


def test_network_cidr_and_provider_segment_are_immutable(api: stack.Stack) -> None:
    assert _apply(api, _net("fixed-net", cidr="10.1.0.0/24"))[0] == 0
    code, stderr = _apply(api, _net("fixed-net", cidr="10.2.0.0/24"))
    assert code != 0 and "cidr is immutable" in stderr
    assert _apply(api, _pnet("fixed-pnet", cidr="10.3.0.0/24", vlanID=5))[0] == 0
    code, stderr = _apply(api, _pnet("fixed-pnet", cidr="10.3.0.0/24", vlanID=6))
    assert code != 0 and "physicalNetwork, vlanID and cidr are immutable" in stderr
    # DNS servers may change.
    assert _apply(api, _pnet("fixed-pnet", cidr="10.3.0.0/24", vlanID=5,
                             dnsNameservers=["10.3.0.53"]))[0] == 0  # fmt: skip


def test_server_networks_omitted_empty_or_listed_and_immutable(api: stack.Stack) -> None:
    assert _apply(api, _server("nics-default", None))[0] == 0
    assert _apply(api, _server("nics-none", []))[0] == 0
    stored = api.get("server", "nics-none", "default")
    assert stored is not None and stored["spec"]["networks"] == [], "an empty list stays empty"
    stored = api.get("server", "nics-default", "default")
    assert stored is not None and "networks" not in stored["spec"]
    two = [{"networkRef": "tenant-ok", "fixedIP": "10.0.0.21"},
           {"networkRef": "lan-ok", "kind": "ProviderNetwork"}]  # fmt: skip
    assert _apply(api, _server("nics-two", two))[0] == 0
    code, stderr = _apply(api, _server("nics-two", two[:1]))
    assert code != 0 and "networks is immutable" in stderr
    header = api.kubectl("get", "srv", "-n", "default").stdout.splitlines()[0]
    assert "ADDRESS" in header
    delete_unheld(api, "default", "nics-default", "nics-none", "nics-two")
