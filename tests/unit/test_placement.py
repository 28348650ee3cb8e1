"""Filters, the RAM weigher and claims: pure functions, no API server needed."""

from __future__ import annotations

import datetime as dt

from kubenova_api.resources import Hypervisor
from kubenova_operator import cluster
from kubenova_operator.scheduling import claims, hosts, placement

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(seconds=30)
SMALL = hosts.Resources(1, 512, 1)
NOTHING = hosts.Resources()


def _status(
    beat_age: float = 1, ready: str = "True", mem: int = 4096, cpus: int = 2, **extra: object
) -> dict:
    return {
        "lastHeartbeatTime": (NOW - dt.timedelta(seconds=beat_age)).isoformat(),
        "conditions": [{"type": "Ready", "status": ready, "message": "libvirt down"}],
        "total": {"vcpus": cpus, "memoryMiB": mem, "diskGiB": 100},
        "reserved": {"vcpus": 0, "memoryMiB": 0, "diskGiB": 0},
        "guestArchitectures": ["x86_64"],
        "virtType": "qemu",
        **extra,
    }


def _host(
    name: str,
    claimed: hosts.Resources = NOTHING,
    spec: dict | None = None,
    **status: object,
) -> hosts.HostState:
    hv = Hypervisor.parse(
        {"metadata": {"name": name}, "spec": spec or {}, "status": _status(**status)}
    )  # type: ignore[arg-type]
    return hosts.host_state(hv, claimed, hosts.Ratios(), GRACE, NOW)


def test_capacity_applies_ratios_to_total_minus_reserved() -> None:
    h = _host("a", spec={"cpuAllocationRatio": 2.0}, cpus=4)
    assert h.capacity.vcpus == 8
    assert h.capacity.memory_mib == 4096
    assert _host("b", cpus=4).capacity.vcpus == 16  # Nova's default CPU ratio 4.0


def test_stale_heartbeat_or_not_ready_means_down() -> None:
    assert _host("a").up
    stale = _host("a", beat_age=31)
    assert not stale.up and "31s ago" in stale.down_reason
    assert not _host("a", ready="False").up


def test_a_fresh_lease_keeps_a_host_up_whose_status_is_old() -> None:
    hv = Hypervisor.parse({"metadata": {"name": "a"}, "status": _status(beat_age=250)})  # type: ignore[arg-type]

    def state(lease_age: float | None) -> hosts.HostState:
        renewed = None if lease_age is None else NOW - dt.timedelta(seconds=lease_age)
        return hosts.host_state(hv, NOTHING, hosts.Ratios(), GRACE, NOW, renewed)

    assert state(2).up, "the status is written only on change: the Lease is the heartbeat"
    assert not state(None).up
    stale = state(45)
    assert not stale.up and "45s ago" in stale.down_reason, "the later of the two counts"
    # A Lease older than a fresh status (an agent heartbeating in its status) does not matter.
    fresh_status = Hypervisor.parse({"metadata": {"name": "b"}, "status": _status(beat_age=1)})  # type: ignore[arg-type]
    assert hosts.host_state(
        fresh_status, NOTHING, hosts.Ratios(), GRACE, NOW, NOW - dt.timedelta(seconds=600)
    ).up


def test_filters_name_what_rejected_how_many() -> None:
    hs = [
        _host("down", beat_age=120),
        _host("off", spec={"disabled": True}),
        _host("full", claimed=hosts.Resources(0, 4000, 0)),
        _host("elsewhere", spec={"availabilityZone": "az2"}),
    ]
    out = placement.pick_host(placement.Request(SMALL, zone="nova"), hs)
    assert isinstance(out, placement.NoValidHost)
    assert dict(out.rejections) == {"ComputeFilter": 2, "AvailabilityZoneFilter": 1, "RamFilter": 1}
    assert "No valid host was found among 4 hosts" in out.message
    assert "RamFilter rejected 1" in out.message


def test_no_hosts_at_all_says_so() -> None:
    out = placement.pick_host(placement.Request(SMALL), [])
    assert isinstance(out, placement.NoValidHost)
    assert "no Hypervisor is registered" in out.message


def test_ram_weigher_spreads_and_ties_break_by_name() -> None:
    hs = [_host("b"), _host("a"), _host("c", claimed=hosts.Resources(0, 1024, 0))]
    assert placement.pick_host(placement.Request(SMALL), hs) == placement.Decision("a")
    busy_a = [_host("a", claimed=hosts.Resources(0, 2048, 0)), _host("b")]
    assert placement.pick_host(placement.Request(SMALL), busy_a) == placement.Decision("b")


def test_host_name_architecture_vcpu_and_disk_filters() -> None:
    hs = [_host("a"), _host("b")]
    assert placement.pick_host(placement.Request(SMALL, host_name="b"), hs).host == "b"  # type: ignore[union-attr]
    out = placement.pick_host(placement.Request(SMALL, arch="aarch64"), hs)
    assert isinstance(out, placement.NoValidHost)
    assert dict(out.rejections) == {"ImagePropertiesFilter": 2}
    out = placement.pick_host(placement.Request(hosts.Resources(9, 1, 1)), hs)
    assert dict(out.rejections) == {"VCPUFilter": 2}  # type: ignore[union-attr]
    out = placement.pick_host(placement.Request(hosts.Resources(1, 1, 101)), hs)
    assert dict(out.rejections) == {"DiskFilter": 2}  # type: ignore[union-attr]


def test_assumed_claims_count_until_observed_and_vanish_with_their_server() -> None:
    c = claims.Claims()
    c.assume(claims.Claim("u1", "a", SMALL))
    assert c.per_host() == {"a": SMALL}
    c.settle(bound_to=lambda uid: "a", alive=lambda uid: True)
    assert c.per_host() == {}  # observed now: counted once (by the cluster), not twice
    assert not c.is_assumed("u1")
    c.assume(claims.Claim("u2", "b", SMALL))
    c.settle(bound_to=lambda uid: None, alive=lambda uid: False)
    assert c.per_host() == {}  # u2 was deleted before its binding was seen


def _summary(uid: str, node: str | None, group: str | None = None) -> cluster.ServerSummary:
    return cluster.ServerSummary(
        namespace="ns",
        name=uid,
        uid=uid,
        node=node,
        phase=None,
        flavor=SMALL if node else None,
        flavor_name="small" if node else None,
        flavor_ref="small",
        image_ref="img",
        group_ref=group,
        zone=None,
        deleting=False,
    )


def test_the_cluster_counts_claims_incrementally() -> None:
    index: dict[str, cluster.ServerSummary] = {
        "u1": _summary("u1", "a", "g"),
        "u2": _summary("u2", "a"),
        "u3": _summary("u3", None),
    }
    known = cluster.Cluster()
    assert known.sync(index) == 3  # the first sync reads everything
    assert known.claimed() == {"a": SMALL + SMALL}
    assert known.group_hosts("ns/g") == {"a": 1}
    index["u3"] = _summary("u3", "b")
    del index["u1"]
    for uid in ("u1", "u3"):
        known.touch(uid)
    assert known.sync(index) == 2  # afterwards only what changed
    assert known.claimed() == {"a": SMALL, "b": SMALL}
    assert known.group_hosts("ns/g") == {}
    assert [s.name for s in known.on_host("a")] == ["u2"]
    assert known.sync(index) == 0  # nothing touched: nothing looked at


def test_server_group_filters() -> None:
    hs = [_host("a"), _host("b"), _host("c")]
    apart = placement.Request(SMALL, group_policy="anti-affinity", group_hosts={"a": 1, "b": 1})
    assert placement.pick_host(apart, hs) == placement.Decision("c")
    full = placement.Request(
        SMALL, group_policy="anti-affinity", group_hosts={"a": 1, "b": 1, "c": 1}
    )
    out = placement.pick_host(full, hs)
    assert isinstance(out, placement.NoValidHost)
    assert dict(out.rejections) == {"ServerGroupAntiAffinityFilter": 3}
    together = placement.Request(SMALL, group_policy="affinity", group_hosts={"b": 2})
    assert placement.pick_host(together, hs) == placement.Decision("b")
    first = placement.Request(SMALL, group_policy="affinity", group_hosts={})
    assert placement.pick_host(first, hs) == placement.Decision("a")  # any host; tie by name


def test_soft_policies_weigh_instead_of_filtering() -> None:
    hs = [_host("a"), _host("b", claimed=hosts.Resources(0, 2048, 0))]
    soft = placement.Request(SMALL, group_policy="soft-affinity", group_hosts={"b": 1})
    # RAM alone prefers a; the soft-affinity weigher with a large multiplier prefers b.
    assert placement.pick_host(soft, hs) == placement.Decision("a")
    assert placement.pick_host(
        soft, hs, placement.Weights(soft_affinity=5.0)
    ) == placement.Decision("b")
    anti = placement.Request(SMALL, group_policy="soft-anti-affinity", group_hosts={"a": 1, "b": 1})
    assert placement.pick_host(anti, hs) == placement.Decision("a")  # still placed


def test_negative_multipliers_stack_instead_of_spread() -> None:
    hs = [_host("a"), _host("b", claimed=hosts.Resources(1, 1024, 0))]
    spread = placement.pick_host(placement.Request(SMALL), hs)
    stack = placement.pick_host(placement.Request(SMALL), hs, placement.Weights(ram=-1.0, cpu=-1.0))
    assert spread == placement.Decision("a") and stack == placement.Decision("b")


def test_image_virt_type_requirement() -> None:
    hs = [_host("a"), _host("b")]
    assert isinstance(
        placement.pick_host(placement.Request(SMALL, virt_type="qemu"), hs), placement.Decision
    )
    out = placement.pick_host(placement.Request(SMALL, virt_type="kvm"), hs)
    assert isinstance(out, placement.NoValidHost)
    assert dict(out.rejections) == {"ImagePropertiesFilter": 2}


def test_image_firmware_and_machine_type_requirements() -> None:
    from kubenova_api.resources import ImageSpec  # noqa: PLC0415
    from kubenova_operator import binding  # noqa: PLC0415

    def image(**props: str) -> ImageSpec:
        disk = {"url": "http://x.example/d", "sha256": "a" * 64}
        return ImageSpec.model_validate({"source": {"disk": disk}, "properties": props})

    old = _host("old")  # an agent that publishes no firmwares: BIOS only
    ovmf = _host("ovmf", firmwares=["bios", "uefi"], machineTypes=["pc", "q35", "pc-q35-7.2"])
    secure = _host("secure", firmwares=["bios", "uefi", "uefi-secure-boot"])
    fleet = [old, ovmf, secure]

    def pick(img: ImageSpec) -> placement.Decision | placement.NoValidHost:
        req = binding.placement_request(None, SMALL, img, None, {}, None)
        return placement.pick_host(req, fleet, placement.Weights())

    assert binding.required_firmware(image()) is None
    assert isinstance(pick(image(hw_firmware_type="bios")), placement.Decision)
    uefi = image(hw_firmware_type="uefi", hw_machine_type="pc-q35-7.2")
    assert pick(uefi) == placement.Decision("ovmf")
    sb = image(hw_firmware_type="uefi", os_secure_boot="required")
    assert binding.required_firmware(sb) == "uefi-secure-boot"
    assert pick(sb) == placement.Decision("secure")
    fleet = [old, ovmf]
    refused = pick(sb)
    assert isinstance(refused, placement.NoValidHost)
    assert refused.rejections == (("ImagePropertiesFilter", 2),)
    req = binding.placement_request(None, SMALL, sb, None, {}, None)
    assert placement.image_needs(req) == "x86_64, firmware uefi-secure-boot"


def test_host_states_are_kept_between_passes_until_an_input_changes() -> None:
    """A pass at 1,000 hosts must not make 1,000 states anew: a host keeps its state while
    its Hypervisor object, its claims and its liveness are what they were."""

    def hv(name: str, **status: object) -> Hypervisor:
        return Hypervisor.parse({"metadata": {"name": name}, "status": _status(**status)})  # type: ignore[arg-type]

    a, b = hv("a"), hv("b")
    cache = hosts.StateCache()

    def states(
        hvs: dict[str, Hypervisor], claimed: dict[str, hosts.Resources], now: dt.datetime = NOW
    ) -> dict[str, hosts.HostState]:
        return cache.states(hvs, claimed, hosts.Ratios(), GRACE, now, {})

    first = states({"b": b, "a": a}, {})
    assert list(first) == ["a", "b"]
    again = states({"a": a, "b": b}, {})
    assert again["a"] is first["a"] and again["b"] is first["b"]
    # A claim on a: only a is made again, with it.
    claimed = states({"a": a, "b": b}, {"a": SMALL})
    assert claimed["a"] is not first["a"] and claimed["a"].free.vcpus == first["a"].free.vcpus - 1
    assert claimed["b"] is first["b"]
    # A new Hypervisor object for b (its status changed): b is made again from it.
    b2 = hv("b", mem=8192)
    changed = states({"a": a, "b": b2}, {"a": SMALL})
    assert changed["a"] is claimed["a"]
    assert changed["b"].free.memory_mib == 8192
    # Time passes beyond the grace period: both go down, whatever was kept.
    later = states({"a": a, "b": b2}, {"a": SMALL}, NOW + dt.timedelta(seconds=60))
    assert not later["a"].up and not later["b"].up
    # A host that is gone is forgotten.
    assert list(states({"a": a}, {})) == ["a"]


def test_filters_that_cannot_refuse_a_request_are_not_run() -> None:
    plain = placement.Request(SMALL)
    names = [name for name, _ in placement.applicable_filters(plain)]
    assert names == [
        "ComputeFilter",
        "ImagePropertiesFilter",
        "VCPUFilter",
        "RamFilter",
        "DiskFilter",
    ]
    everything = placement.Request(
        SMALL,
        zone="z",
        host_name="h",
        group_policy="anti-affinity",
        ignore_hosts=frozenset({"x"}),
        overlay=True,
    )
    assert len(placement.applicable_filters(everything)) == len(placement.FILTERS) - 1
