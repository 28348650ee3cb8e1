"""Fast tests of the decisions around networks: which networks a Server's NICs are on, the
addresses they get with bindings in flight and bound Servers around, and what plan an agent
makes for its host from the API objects (no API server, no host changes)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from kubenova_agent import networking
from kubenova_agent.network import types
from kubenova_agent.settings import AgentSettings
from kubenova_api.kube import RetryLater
from kubenova_api.networks import Network, NetworkHost, ProviderNetwork
from kubenova_api.resources import Server
from kubenova_operator import networks
from kubenova_operator.cluster import Cluster, ServerSummary
from kubenova_operator.scheduling import claims
from kubenova_operator.scheduling.hosts import Resources

G = "compute.kubenova.io/v1alpha1"


def _net(name: str, cidr: str = "10.0.0.0/24", vni: int | None = 7, **spec: Any) -> Network:
    body: dict[str, Any] = {
        "apiVersion": G, "kind": "Network",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"cidr": cidr, **spec}, "status": {},
    }  # fmt: skip
    if vni is not None:
        body["status"]["vni"] = vni
    return Network.parse(body)


def _server(name: str, nets: list[dict[str, Any]] | None, **status: Any) -> Server:
    spec: dict[str, Any] = {"flavorRef": "f", "imageRef": "i"}
    if nets is not None:
        spec["networks"] = nets
    return Server.parse({
        "apiVersion": G, "kind": "Server",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": spec, "status": status,
    })  # fmt: skip


NETS = {"ns/blue": _net("blue"), "ns/red": _net("red", vni=None)}


def test_omitted_networks_mean_the_namespace_default_and_an_empty_list_none() -> None:
    got = networks.resolve(_server("a", None), NETS, {}, {"ns": ["blue"]}, {})
    assert isinstance(got, list) and [n.name for n in got] == ["blue"]
    assert networks.resolve(_server("a", []), NETS, {}, {"ns": ["blue"]}, {}) == []
    assert networks.resolve(_server("a", None), NETS, {}, {}, {}) == []
    two = networks.resolve(_server("a", None), NETS, {}, {"ns": ["blue", "green"]}, {})
    assert isinstance(two, networks.Wait) and two.reason == "DefaultNetworkAmbiguous"


def test_missing_or_unready_networks_wait_with_a_reason() -> None:
    missing = networks.resolve(_server("a", [{"networkRef": "nope"}]), NETS, {}, {}, {})
    assert isinstance(missing, networks.Wait) and missing.reason == "NetworkNotFound"
    assert "nope" in missing.message
    unready = networks.resolve(_server("a", [{"networkRef": "red"}]), NETS, {}, {}, {})
    assert isinstance(unready, networks.Wait) and unready.reason == "NetworkNotReady"


def _cluster(*servers: Server) -> Cluster:
    cluster = Cluster()
    cluster.sync({s.uid: ServerSummary.of(s) for s in servers})
    return cluster


def _bound(name: str, ip: str, host: str = "h1") -> Server:
    return _server(
        name,
        [{"networkRef": "blue"}],
        nodeName=host,
        addresses=[
            {"network": "blue", "kind": "Network", "ip": ip, "mac": f"fa:16:3e:00:00:{ip[-1]}0"}
        ],
    )


def test_addresses_skip_bound_and_in_flight_ones_and_name_a_holder() -> None:
    cluster = _cluster(_bound("old", "10.0.0.2"))
    assumed = claims.Claims()
    assumed.assume(
        claims.Claim("uid-x", "h2", Resources(1, 1, 1), None,
                     (("ns/blue", ipaddress.IPv4Address("10.0.0.3"), "fa:16:3e:aa:bb:cc"),))
    )  # fmt: skip
    server = _server("new", [{"networkRef": "blue"}, {"networkRef": "blue"}])
    nics = networks.resolve(server, NETS, {}, {}, {})
    assert isinstance(nics, list)
    leases = networks.allocate(server, nics, cluster, assumed)
    assert isinstance(leases, list)
    assert [str(lease.ip) for _, lease in leases] == ["10.0.0.4", "10.0.0.5"]
    assert len({lease.mac for _, lease in leases}) == 2
    taken = _server("dup", [{"networkRef": "blue", "fixedIP": "10.0.0.2"}])
    nics = networks.resolve(taken, NETS, {}, {}, {})
    assert isinstance(nics, list)
    refused = networks.allocate(taken, nics, cluster, assumed)
    assert isinstance(refused, networks.Wait) and refused.reason == "FixedIPTaken"
    assert "Server ns/old (NIC 0)" in refused.message, refused
    # Once the claim in flight is forgotten (its binding failed), its address is free again;
    # automatic addresses go on after the last one given.
    assumed.forget("uid-x")
    wants = _server("wants", [{"networkRef": "blue", "fixedIP": "10.0.0.3"}])
    got = networks.allocate(wants, networks.resolve(wants, NETS, {}, {}, {}), cluster, assumed)  # type: ignore[arg-type]
    assert isinstance(got, list) and str(got[0][1].ip) == "10.0.0.3"
    again = networks.allocate(server, networks.resolve(server, NETS, {}, {}, {}), cluster, assumed)  # type: ignore[arg-type]
    assert isinstance(again, list) and [str(lease.ip) for _, lease in again] == [
        "10.0.0.6",
        "10.0.0.7",
    ]


def test_a_server_that_has_addresses_keeps_them() -> None:
    server = _bound("kept", "10.0.0.9")
    cluster = _cluster(server)
    nics = networks.resolve(server, NETS, {}, {}, {})
    assert isinstance(nics, list)
    leases = networks.allocate(server, nics, cluster, claims.Claims())
    assert isinstance(leases, list) and str(leases[0][1].ip) == "10.0.0.9"
    assert leases[0][1].mac == server.status.addresses[0].mac


class _Store:
    """An informer's cache, synced."""

    def __init__(self, objs: list[Any]) -> None:
        self.objs = {(o.namespace or "", o.name): o for o in objs}
        self.synced = threading.Event()
        self.synced.set()

    def get(self, key: tuple[str, str]) -> Any:
        return self.objs.get(key)

    def items(self) -> list[Any]:
        return list(self.objs.values())


def test_an_agent_plans_the_networks_of_its_guests_with_the_other_hosts_as_peers() -> None:
    blue = _net("blue")
    blue.status.hosts = [
        NetworkHost(name="h1", tunnelAddress="192.0.2.1"),
        NetworkHost(name="h2", tunnelAddress="192.0.2.2"),
    ]
    lan = ProviderNetwork.parse({
        "apiVersion": G, "kind": "ProviderNetwork", "metadata": {"name": "lan", "uid": "uid-lan"},
        "spec": {"physicalNetwork": "lan", "cidr": "10.1.0.0/24"},
        "status": {"hosts": [{"name": "h1", "dhcpAddress": "10.1.0.2"}]},
    })  # fmt: skip
    cfg = AgentSettings(host_name="h1", tunnel_address="192.0.2.1",
                        physical_interface_mappings="lan:eth1")  # fmt: skip
    guest = _bound("g", "10.0.0.5")
    agent = networking.NetworkAgent(cfg, None, lambda: [guest])  # type: ignore[arg-type]
    agent.networks = _Store([blue])  # type: ignore[assignment]
    agent.providers = _Store([lan])  # type: ignore[assignment]
    plans = {p.key: p for p in agent.plans()}
    tenant = plans[types.key_of("uid-blue")]
    assert isinstance(tenant.segment, types.Overlay)
    assert tenant.segment.vni == 7
    assert tenant.segment.peers == frozenset({ipaddress.IPv4Address("192.0.2.2")})
    assert [(str(p.ip), p.mac) for p in tenant.ports] == [("10.0.0.5", "fa:16:3e:00:00:50")]
    assert tenant.guest_mtu == 1450
    # The provider network lists this host (it is to run a guest there): planned, with its
    # DHCP address, no ports yet.
    provider = plans[types.key_of("uid-lan")]
    assert provider.dhcp_address == ipaddress.IPv4Address("10.1.0.2") and provider.ports == ()


def test_nics_of_a_server_for_its_domain_and_config_drive() -> None:
    cfg = AgentSettings(host_name="h1", network_plumbing=False)
    blue = _net("blue", dnsNameservers=["10.0.0.53"])
    guest = _bound("g", "10.0.0.5")
    agent = networking.NetworkAgent(cfg, None, lambda: [guest])  # type: ignore[arg-type]
    agent.networks = _Store([blue])  # type: ignore[assignment]
    agent.providers = _Store([])  # type: ignore[assignment]
    ((interface, nic),) = agent.nics(guest)
    assert interface.mac == nic.mac == "fa:16:3e:00:00:50"
    assert interface.bridge == f"brk{types.key_of('uid-blue')}" and interface.mtu == 1450
    assert str(nic.ip) == "10.0.0.5" and str(nic.gateway) == "10.0.0.1" and nic.dhcp
    assert [str(d) for d in nic.dns] == ["10.0.0.53"]
    agent.networks = _Store([])  # type: ignore[assignment]
    try:
        agent.nics(guest)
    except RetryLater as exc:
        assert exc.reason == "NetworkNotFound" and "blue" in str(exc)
    else:
        raise AssertionError("a NIC on an unknown network must wait")
