"""IPAM and VNI allocation: refusals named by reason, stable MACs, and (hypothesis) under any
sequence of requests and releases never two holders of one address and never the network,
broadcast or gateway address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubenova_operator import ipam

A = ipaddress.IPv4Address
NET = ipam.Subnet(cidr=ipaddress.IPv4Network("10.0.0.0/24"), gateway=A("10.0.0.1"))
EMPTY = ipam.Held({})


@pytest.mark.parametrize(
    ("fixed", "reason"),
    [
        ("10.0.1.5", ipam.Reason.OutsideSubnet),
        ("10.0.0.0", ipam.Reason.NetworkAddress),
        ("10.0.0.255", ipam.Reason.BroadcastAddress),
        ("10.0.0.1", ipam.Reason.Gateway),
    ],
)
def test_fixed_ip_refusals_name_the_reason(fixed: str, reason: ipam.Reason) -> None:
    got = ipam.allocate(NET, EMPTY, ipam.Request("srv/0", A(fixed)))
    assert isinstance(got, ipam.Refusal) and got.reason is reason, got
    assert fixed in got.message


def test_fixed_ip_taken_by_another_is_refused() -> None:
    held = ipam.Held.of([ipam.Lease("a/0", A("10.0.0.7"), ipam.mac_for("a/0"))])
    got = ipam.allocate(NET, held, ipam.Request("b/0", A("10.0.0.7")))
    assert isinstance(got, ipam.Refusal) and got.reason is ipam.Reason.Taken
    assert "a/0" in got.message


def test_reserved_addresses_are_refused_and_skipped() -> None:
    net = ipam.Subnet(cidr=NET.cidr, gateway=NET.gateway, reserved=frozenset({A("10.0.0.2")}))
    got = ipam.allocate(net, EMPTY, ipam.Request("x/0", A("10.0.0.2")))
    assert isinstance(got, ipam.Refusal) and got.reason is ipam.Reason.Reserved
    lease = ipam.allocate(net, EMPTY, ipam.Request("x/0"))
    assert isinstance(lease, ipam.Lease) and lease.ip == A("10.0.0.3")


def test_the_mac_is_derived_from_the_holder() -> None:
    first = ipam.allocate(NET, EMPTY, ipam.Request("s/0"))
    assert isinstance(first, ipam.Lease)
    assert ipam.allocate(NET, EMPTY, ipam.Request("s/0")) == first
    assert first.mac == ipam.mac_for("s/0") and first.mac.startswith("fa:16:3e:")


def test_pool_limits_automatic_addresses_and_exhaustion_is_a_refusal() -> None:
    net = ipam.Subnet(cidr=NET.cidr, gateway=NET.gateway, pools=((A("10.0.0.10"), A("10.0.0.11")),))
    leases = []
    for i in range(2):
        lease = ipam.allocate(net, ipam.Held.of(leases), ipam.Request(f"s{i}/0"))
        assert isinstance(lease, ipam.Lease)
        leases.append(lease)
    assert [lease.ip for lease in leases] == [A("10.0.0.10"), A("10.0.0.11")]
    full = ipam.allocate(net, ipam.Held.of(leases), ipam.Request("s9/0"))
    assert isinstance(full, ipam.Refusal) and full.reason is ipam.Reason.PoolExhausted
    # A fixed IP outside the pool but inside the subnet is allowed (as in Neutron).
    fixed = ipam.allocate(net, ipam.Held.of(leases), ipam.Request("s9/0", A("10.0.0.50")))
    assert isinstance(fixed, ipam.Lease)


def test_mac_collisions_within_a_network_are_rederived() -> None:
    taken = {ipam.mac_for("s/0")}
    other = ipam.mac_for("s/0", taken)
    assert other != ipam.mac_for("s/0") and other.startswith("fa:16:3e:")


def test_vni_is_stable_per_network_and_never_one_in_use() -> None:
    first = ipam.allocate_vni("uid-1", set())
    assert ipam.allocate_vni("uid-1", set()) == first
    assert ipam.allocate_vni("uid-1", {first}) != first
    assert ipam.allocate_vni("x", {1, 2}, low=1, high=3) == 3
    with pytest.raises(ipam.VniExhausted):
        ipam.allocate_vni("x", {1, 2, 3}, low=1, high=3)


small_net = st.sampled_from(["10.1.0.0/28", "10.1.0.0/29", "192.168.7.0/30", "10.9.9.0/31"])
step = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 30), st.none() | st.integers(0, 20)),
    st.tuples(st.just("release"), st.integers(0, 30), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(
    cidr=small_net, gateway_offset=st.none() | st.integers(0, 3), steps=st.lists(step, max_size=60)
)
def test_never_two_holders_of_one_address_nor_a_forbidden_one(
    cidr: str, gateway_offset: int | None, steps: list[tuple[str, int, int | None]]
) -> None:
    net_ = ipaddress.IPv4Network(cidr)
    gateway = (
        None
        if gateway_offset is None
        else net_.network_address + min(gateway_offset, net_.num_addresses - 1)
    )
    subnet = ipam.Subnet(cidr=net_, gateway=gateway)
    leases: dict[str, ipam.Lease] = {}
    for action, who, offset in steps:
        holder = f"srv-{who}/0"
        if action == "release" or holder in leases:
            leases.pop(holder, None)
            continue
        fixed = (
            None if offset is None else ipaddress.IPv4Address(int(net_.network_address) + offset)
        )
        got = ipam.allocate(subnet, ipam.Held.of(leases.values()), ipam.Request(holder, fixed))
        if isinstance(got, ipam.Refusal):
            if got.reason is ipam.Reason.PoolExhausted:
                free = set(net_) - ipam.unusable(subnet) - {lease.ip for lease in leases.values()}
                assert not free, (free, got)
            continue
        leases[holder] = got
        ips = [lease.ip for lease in leases.values()]
        macs = [lease.mac for lease in leases.values()]
        assert len(ips) == len(set(ips)), "one address, two holders"
        assert len(macs) == len(set(macs)), "one MAC, two holders"
        assert got.ip in net_
        assert got.ip not in ipam.unusable(subnet)


def test_a_search_goes_on_after_the_last_address_given_and_wraps_around() -> None:
    net = ipam.Subnet(cidr=NET.cidr, gateway=NET.gateway, pools=((A("10.0.0.10"), A("10.0.0.12")),))
    held = ipam.Held.of([ipam.Lease("a/0", A("10.0.0.10"), ipam.mac_for("a/0"))])
    got = ipam.allocate(net, held, ipam.Request("b/0"), after=A("10.0.0.11"))
    assert isinstance(got, ipam.Lease) and got.ip == A("10.0.0.12")
    got = ipam.allocate(net, held, ipam.Request("b/0"), after=A("10.0.0.12"))
    assert isinstance(got, ipam.Lease) and got.ip == A("10.0.0.11")
