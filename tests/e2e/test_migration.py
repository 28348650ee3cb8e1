"""Live migration between real libvirtd + QEMU hosts.

The bed has three hosts: host-a and host-b share their instances folder (shared storage: only
memory moves), host-c has its own (block migration: the disk overlay is copied too) and a
libvirt that knows only CPU models up to about 2010 (an older host)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import kstatus, netutil, stack
from tests.e2e import helpers

from .conftest import unique_namespace
from .helpers import apply, boots, domains_for, events, flavor, server

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def mbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    s = stack.Stack(
        pathlib.Path(tmp_path_factory.mktemp("migration")),
        host_count=3,
        shared_instances=("host-a", "host-b"),
        old_cpu_hosts=("host-c",),
        heartbeat_grace_seconds=8.0,
    )
    with s:
        s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(s.image_manifest()))
        apply(s, flavor("m1.tiny"))
        hostcpu = yaml.safe_load(flavor("m1.hostcpu"))
        hostcpu["spec"]["extraSpecs"] = {"hw:cpu_mode": "host-model"}
        apply(s, yaml.safe_dump(hostcpu))
        yield s


@pytest.fixture
def ns(mbed: stack.Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from unique_namespace(mbed, request, "m")


# ----------------------------------------------------------------------------- helpers


def boot_on(bed: stack.Stack, ns: str, name: str, host: str, flavor_name: str = "m1.tiny") -> str:
    """A running guest on ``host`` whose uptime counter has started; returns its UID."""
    apply(bed, server(name, ns, flavor=flavor_name, hostName=host))
    helpers.wait_ready(bed, ns, name)
    body = bed.get("server", name, ns)
    assert body is not None and body["status"]["nodeName"] == host
    uid = str(body["metadata"]["uid"])
    netutil.wait_until(lambda: last_uptime(bed, host, uid) >= 2.0, 60, "the uptime counter")
    return uid


def uptimes(bed: stack.Stack, host: str, uid: str) -> list[float]:
    return [
        float(line.split()[1])
        for line in bed.console(host, uid).splitlines()
        if line.startswith("kubenova-uptime ") and len(line.split()) > 1
    ]


def last_uptime(bed: stack.Stack, host: str, uid: str) -> float:
    return helpers.last_uptime(bed.console(host, uid))


def migrate(bed: stack.Stack, ns: str, name: str, server_name: str, **spec: Any) -> None:
    body = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ServerMigration",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"serverRef": server_name, **spec},
    }
    apply(bed, yaml.safe_dump(body))


def smig(bed: stack.Stack, ns: str, name: str) -> dict[str, Any]:
    body = bed.get("servermigration", name, ns)
    assert body is not None, f"ServerMigration {name} is gone"
    return body


def wait_phase(bed: stack.Stack, ns: str, name: str, *phases: str, timeout: float = 180) -> dict:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(smig(bed, ns, name))
        return (found.get("status") or {}).get("phase") in phases

    netutil.wait_until(reached, timeout, f"ServerMigration {name} to reach {phases}")
    return found


def wait_running_with_data(bed: stack.Stack, ns: str, name: str) -> None:
    def moving() -> bool:
        obj = smig(bed, ns, name)
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), status
        if status.get("phase") != "Running" or progress.get("dataProcessedBytes", 0) == 0:
            return False
        # What GitOps tools (kstatus itself) say of a migration under way.
        assert kstatus.status(obj) == kstatus.IN_PROGRESS, kstatus.compute(obj)
        return True

    netutil.wait_until(moving, 120, f"{name} to be moving data")


def assert_still_on_source(bed: stack.Stack, ns: str, name: str, uid: str, source: str) -> None:
    """The guest runs on the source, counting on, and nothing of it is anywhere else."""
    before = last_uptime(bed, source, uid)
    assert bed.hosts[source].virsh("domstate", uid).strip() == "running"
    netutil.wait_until(
        lambda: last_uptime(bed, source, uid) > before + 1.0, 30, "the guest to keep counting"
    )
    assert boots(bed.console(source, uid)) == 1, "the guest rebooted"
    netutil.wait_until(
        lambda: domains_for(bed, ns, name) == [(source, uid)], 60, "no domain but the source's"
    )
    body = bed.get("server", name, ns)
    assert body is not None
    assert body["status"]["nodeName"] == source
    netutil.wait_until(
        lambda: (bed.get("server", name, ns) or {}).get("status", {}).get("phase") == "ACTIVE",
        30,
        "the Server to be ACTIVE again",
    )


def target_files(bed: stack.Stack, host: str, uid: str) -> list[str]:
    folder = bed.hosts[host].outside("/var/lib/kubenova/instances")
    return sorted(p.name for p in folder.glob(f"{uid}-*"))


# ----------------------------------------------------------------------------- 1: it moves


@pytest.mark.parametrize(("target", "block"), [("host-b", False), ("host-c", True)])
def test_live_migration_keeps_the_guest_running(
    mbed: stack.Stack, ns: str, target: str, block: bool
) -> None:
    uid = boot_on(mbed, ns, "web", "host-a")
    before = last_uptime(mbed, "host-a", uid)
    migrate(mbed, ns, "move", "web", targetNode=target)
    done = wait_phase(mbed, ns, "move", "Succeeded", "Failed")
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["sourceNode"] == "host-a" and status["targetNode"] == target
    assert status["blockMigration"] is block
    progress = status["progress"]
    assert progress["downtimeMs"] >= 0 and progress["dataProcessedBytes"] > 1 << 20
    assert progress["percent"] == 100
    assert any(r == "Succeeded" for r, _ in events(mbed, ns, "ServerMigration", "move"))
    # What GitOps tools (kstatus itself) say of a migration that is done.
    assert kstatus.status(done) == kstatus.CURRENT, kstatus.compute(done)

    body = mbed.get("server", "web", ns)
    assert body is not None and body["status"]["nodeName"] == target
    netutil.wait_until(
        lambda: (mbed.get("server", "web", ns) or {}).get("status", {}).get("phase") == "ACTIVE",
        60,
        "the Server to be ACTIVE on the target",
    )
    assert domains_for(mbed, ns, "web") == [(target, uid)]
    assert not mbed.hosts["host-a"].has_domain(uid)
    assert kstatus.status(mbed.get("server", "web", ns)) == kstatus.CURRENT
    # The guest's own clock continues on the target: no boot, no reset, still counting.
    netutil.wait_until(
        lambda: last_uptime(mbed, target, uid) > before + 2.0, 60, "uptime on the target"
    )
    moved = mbed.console(target, uid)
    assert boots(moved) == 0, "the guest booted again on the target"
    assert min(uptimes(mbed, target, uid)) >= before
    if block:
        assert target_files(mbed, "host-a", uid) == [], "the source kept copied disks"
        assert any(n.endswith("root.qcow2") for n in target_files(mbed, target, uid))
    else:
        assert any(n.endswith("root.qcow2") for n in target_files(mbed, target, uid))

    # The Server is the target's now: deleting it removes everything there.
    mbed.kubectl("delete", "server", "web", "-n", ns, "--timeout=90s", timeout=120)
    assert domains_for(mbed, ns, "web") == []


# ----------------------------------------------------------------------------- 2: faults


def test_cancel_by_deleting_keeps_the_guest_on_the_source(mbed: stack.Stack, ns: str) -> None:
    uid = boot_on(mbed, ns, "db", "host-a")
    migrate(mbed, ns, "slow", "db", targetNode="host-b", bandwidthMiBps=1)
    wait_running_with_data(mbed, ns, "slow")
    mbed.kubectl("delete", "servermigration", "slow", "-n", ns, "--wait=false")
    netutil.wait_until(
        lambda: mbed.get("servermigration", "slow", ns) is None, 90, "the ServerMigration to go"
    )
    reasons = events(mbed, ns, "ServerMigration", "slow")
    assert any(r == "Cancelled" for r, _ in reasons), reasons
    assert any(
        r == "MigrationFailed" and "Cancelled" in m for r, m in events(mbed, ns, "Server", "db")
    )
    assert_still_on_source(mbed, ns, "db", uid, "host-a")


def test_timeout_aborts_and_the_target_is_cleaned(mbed: stack.Stack, ns: str) -> None:
    uid = boot_on(mbed, ns, "batch", "host-a")
    migrate(
        mbed,
        ns,
        "late",
        "batch",
        targetNode="host-c",
        bandwidthMiBps=1,
        completionTimeoutPerGiB="2s",
        completionAction="Abort",
    )
    done = wait_phase(mbed, ns, "late", "Succeeded", "Failed", timeout=120)
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["reason"] == "Timeout", done["status"]
    assert "keeps running on host-a" in done["status"]["message"]
    failed = kstatus.compute(done)
    assert failed["status"] == kstatus.FAILED and "host-a" in failed["message"], failed
    netutil.wait_until(
        lambda: (smig(mbed, ns, "late")["status"].get("target") or {}).get("cleanedUp"),
        60,
        "the target to clean up",
    )
    assert target_files(mbed, "host-c", uid) == []
    assert_still_on_source(mbed, ns, "batch", uid, "host-a")


def test_timeout_with_post_copy_finishes_on_the_target(mbed: stack.Stack, ns: str) -> None:
    """A migration too slow to converge in time switches to post-copy: the guest runs on the
    target at once and the rest of its memory follows on demand."""
    uid = boot_on(mbed, ns, "stream", "host-a")
    before = last_uptime(mbed, "host-a", uid)
    migrate(
        mbed,
        ns,
        "pc",
        "stream",
        targetNode="host-b",
        bandwidthMiBps=1,
        allowPostCopy=True,
        completionTimeoutPerGiB="2s",
        completionAction="PostCopy",
    )
    done = wait_phase(mbed, ns, "pc", "Succeeded", "Failed", timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert any(r == "PostCopy" for r, _ in events(mbed, ns, "ServerMigration", "pc"))
    netutil.wait_until(
        lambda: last_uptime(mbed, "host-b", uid) > before + 1, 60, "the guest to count on host-b"
    )
    assert boots(mbed.console("host-b", uid)) == 0
    assert domains_for(mbed, ns, "stream") == [("host-b", uid)]


def test_network_cut_fails_the_migration(mbed: stack.Stack, ns: str) -> None:
    """The migration stream's TCP connections are torn down (``ss -K``) mid-way."""
    uid = boot_on(mbed, ns, "net", "host-a")
    migrate(mbed, ns, "cut", "net", targetNode="host-b", bandwidthMiBps=1)
    wait_running_with_data(mbed, ns, "cut")
    low = mbed.hosts["host-b"].migration_port_min
    subprocess.run(
        ["ss", "-K", "-t", f"( dport >= :{low} and dport <= :{low + 63} )"],
        check=True,
        capture_output=True,
    )
    done = wait_phase(mbed, ns, "cut", "Succeeded", "Failed", timeout=60)
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["reason"] == "MigrationFailed", done["status"]
    assert "keeps running on host-a" in done["status"]["message"]
    netutil.wait_until(
        lambda: (smig(mbed, ns, "cut")["status"].get("target") or {}).get("cleanedUp"),
        60,
        "the target to clean up",
    )
    assert_still_on_source(mbed, ns, "net", uid, "host-a")


def test_target_agent_killed_aborts_the_migration(mbed: stack.Stack, ns: str) -> None:
    uid = boot_on(mbed, ns, "cache", "host-a")
    migrate(mbed, ns, "orphaned", "cache", targetNode="host-b", bandwidthMiBps=1)
    wait_running_with_data(mbed, ns, "orphaned")
    mbed.agents["host-b"].kill()
    try:
        done = wait_phase(mbed, ns, "orphaned", "Succeeded", "Failed", timeout=90)
        assert done["status"]["phase"] == "Failed"
        assert done["status"]["reason"] == "TargetDown", done["status"]
    finally:
        mbed.start_agent("host-b")
    netutil.wait_until(
        lambda: (smig(mbed, ns, "orphaned")["status"].get("target") or {}).get("cleanedUp"),
        60,
        "the restarted target agent to clean up",
    )
    assert_still_on_source(mbed, ns, "cache", uid, "host-a")


def test_source_agent_restarted_mid_migration_can_still_cancel(mbed: stack.Stack, ns: str) -> None:
    """The migration runs in the source's libvirtd, not in its agent: an agent restarted
    meanwhile finds it again, and a cancel then still aborts it."""
    uid = boot_on(mbed, ns, "api", "host-a")
    migrate(mbed, ns, "bumpy", "api", targetNode="host-b", bandwidthMiBps=1)
    wait_running_with_data(mbed, ns, "bumpy")
    mbed.agents["host-a"].kill()
    mbed.start_agent("host-a")
    time.sleep(2)
    assert mbed.hosts["host-a"].virsh("domstate", uid).strip() == "running"
    mbed.kubectl("delete", "servermigration", "bumpy", "-n", ns, "--wait=false")
    netutil.wait_until(
        lambda: mbed.get("servermigration", "bumpy", ns) is None, 90, "the ServerMigration to go"
    )
    failures = [m for r, m in events(mbed, ns, "Server", "api") if r == "MigrationFailed"]
    assert failures and "Cancelled" in failures[-1], failures
    assert_still_on_source(mbed, ns, "api", uid, "host-a")


def test_controller_restarted_mid_migration_still_rebinds(mbed: stack.Stack, ns: str) -> None:
    """The outcome of a move is in the ServerMigration's status: a controller killed while
    the guest moves picks it up when it is back, and the Server ends bound to the target."""
    uid = boot_on(mbed, ns, "svc", "host-a")
    migrate(mbed, ns, "handover", "svc", targetNode="host-b", bandwidthMiBps=10)
    wait_running_with_data(mbed, ns, "handover")
    assert mbed.controller is not None
    mbed.controller.kill()
    time.sleep(2)
    mbed.start_controller()
    done = wait_phase(mbed, ns, "handover", "Succeeded", "Failed", timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    body = mbed.get("server", "svc", ns)
    assert body is not None and body["status"]["nodeName"] == "host-b"
    assert domains_for(mbed, ns, "svc") == [("host-b", uid)]
    netutil.wait_until(
        lambda: (
            ((mbed.get("server", "svc", ns) or {}).get("status") or {}).get("phase") == "ACTIVE"
        ),
        60,
        "the Server to be ACTIVE on host-b",
    )


def test_source_agent_dead_the_target_tells_where_the_guest_is(mbed: stack.Stack, ns: str) -> None:
    """The source's agent dies mid-move and stays dead; libvirtd finishes the move anyway.
    The controller learns from the target that the guest arrived and rebinds the Server;
    the restarted source agent removes only its stale definition — the disks, shared with
    the target, stay."""
    uid = boot_on(mbed, ns, "lonely", "host-a")
    migrate(mbed, ns, "unattended", "lonely", targetNode="host-b", bandwidthMiBps=10)
    wait_running_with_data(mbed, ns, "unattended")
    mbed.agents["host-a"].kill()
    try:
        done = wait_phase(mbed, ns, "unattended", "Succeeded", "Failed", timeout=120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert "host-a is down" in done["status"]["message"]
        body = mbed.get("server", "lonely", ns)
        assert body is not None and body["status"]["nodeName"] == "host-b"
        wait_server_phase(mbed, ns, "lonely", "ACTIVE")
    finally:
        mbed.start_agent("host-a")
    netutil.wait_until(
        lambda: domains_for(mbed, ns, "lonely") == [("host-b", uid)],
        90,
        "the stale definition on host-a to go",
    )
    assert any(n.endswith("root.qcow2") for n in target_files(mbed, "host-b", uid))
    before = last_uptime(mbed, "host-b", uid)
    try:
        netutil.wait_until(
            lambda: last_uptime(mbed, "host-b", uid) > before + 1, 60, "the guest to keep counting"
        )
    except TimeoutError as exc:
        # Failed once in CI (stop 31) and not again in isolation: say what the guest was doing.
        state = mbed.hosts["host-b"].virsh("domstate", "--reason", uid, check=False).strip()
        console = mbed.console("host-b", uid)
        raise AssertionError(
            f"{exc}; on host-b the domain is {state!r}; its console has {len(console)} "
            f"characters, ending {console[-300:]!r}"
        ) from exc


def test_target_libvirtd_killed_fails_the_migration(mbed: stack.Stack, ns: str) -> None:
    uid = boot_on(mbed, ns, "queue", "host-a")
    migrate(mbed, ns, "crash", "queue", targetNode="host-c", bandwidthMiBps=1)
    wait_running_with_data(mbed, ns, "crash")
    target = mbed.hosts["host-c"]
    target.kill()
    try:
        done = wait_phase(mbed, ns, "crash", "Succeeded", "Failed", timeout=90)
        assert done["status"]["phase"] == "Failed", done["status"]
        assert "keeps running on host-a" in done["status"]["message"]
    finally:
        target.start()
    netutil.wait_until(
        lambda: (smig(mbed, ns, "crash")["status"].get("target") or {}).get("cleanedUp"),
        90,
        "the target agent to clean up once libvirtd is back",
    )
    assert target_files(mbed, "host-c", uid) == []
    assert_still_on_source(mbed, ns, "queue", uid, "host-a")


# ----------------------------------------------------------------------------- 3: CPU


def test_target_that_cannot_run_the_guest_cpu_is_refused(mbed: stack.Stack, ns: str) -> None:
    uid = boot_on(mbed, ns, "modern", "host-a", flavor_name="m1.hostcpu")
    cpu = mbed.hosts["host-a"].virsh("dumpxml", uid)
    assert "<model fallback='forbid'>EPYC" in cpu or "host-model" not in cpu
    migrate(mbed, ns, "to-old", "modern", targetNode="host-c")
    done = wait_phase(mbed, ns, "to-old", "Succeeded", "Failed", timeout=90)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "CPUIncompatible", status
    assert "host-c" in status["message"]
    assert (status.get("source") or {}).get("started") is not True, "the guest was moved"
    assert target_files(mbed, "host-c", uid) == []
    assert_still_on_source(mbed, ns, "modern", uid, "host-a")
    # The same guest moves to a host whose CPU is as new as the source's.
    migrate(mbed, ns, "to-peer", "modern", targetNode="host-b")
    assert wait_phase(mbed, ns, "to-peer", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"


def test_cluster_cpu_model_lets_any_guest_move_to_any_host(mbed: stack.Stack, ns: str) -> None:
    """With ``--cpu-mode cluster`` a new guest gets the baseline of every enabled host's CPU,
    so it can move to the older host that refuses a host-model guest."""
    mbed.agents["host-a"].stop()
    mbed.start_agent("host-a", ("--cpu-mode", "cluster"))
    try:
        uid = boot_on(mbed, ns, "portable", "host-a")
        xml = mbed.hosts["host-a"].virsh("dumpxml", uid)
        model = re.search(r"<model[^>]*>([^<]+)</model>", xml)
        assert model is not None and model.group(1) != "EPYC", xml
        migrate(mbed, ns, "anywhere", "portable", targetNode="host-c")
        done = wait_phase(mbed, ns, "anywhere", "Succeeded", "Failed")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        checks = done["status"]["target"]["message"]
        assert "is identical to" in checks or "is a subset of" in checks, checks
        netutil.wait_until(
            lambda: last_uptime(mbed, "host-c", uid) > 0, 60, "the guest to count on host-c"
        )
    finally:
        mbed.agents["host-a"].stop()
        mbed.start_agent("host-a")


# ----------------------------------------------------------------------------- 4: drain


def test_draining_a_host_moves_every_guest_away(mbed: stack.Stack, ns: str) -> None:
    """Three running guests move, one at a time; a suspended one says why it cannot, and
    moves as soon as it is resumed."""
    uids = {name: boot_on(mbed, ns, name, "host-a") for name in ("d1", "d2", "d3", "stuck")}
    helpers.patch(mbed, ns, "stuck", {"powerState": "Suspended"})
    wait_server_phase(mbed, ns, "stuck", "SUSPENDED")
    started = {name: last_uptime(mbed, "host-a", uid) for name, uid in uids.items()}
    patch = json.dumps({"spec": {"evacuate": True}})
    mbed.kubectl("patch", "hypervisor", "host-a", "--type", "merge", "-p", patch)
    try:
        most = [0]

        def progress() -> dict[str, Any]:
            hv = mbed.get("hypervisor", "host-a") or {}
            evac: dict[str, Any] = (hv.get("status") or {}).get("evacuation") or {}
            listing = mbed.kubectl(
                "get", "smig", "-n", ns, "-l", "compute.kubenova.io/evacuating=host-a", "-o", "json"
            )
            phases = [
                (m.get("status") or {}).get("phase") for m in json.loads(listing.stdout)["items"]
            ]
            assert "Failed" not in phases, listing.stdout
            moving = [p for p in phases if p != "Succeeded"]
            most[0] = max(most[0], len(moving))
            return evac

        netutil.wait_until(
            lambda: progress().get("migrated", 0) >= 3, 300, "three servers to move away"
        )
        evac = progress()
        assert evac["remaining"] == 1
        assert len(evac["blocked"]) == 1 and evac["blocked"][0].startswith(
            f"{ns}/stuck: it is SUSPENDED"
        )
        warned = [
            m for r, m in events(mbed, "default", "Hypervisor", "host-a") if r == "CannotEvacuate"
        ]
        assert any(f"{ns}/stuck" in m for m in warned), warned
        helpers.patch(mbed, ns, "stuck", {"powerState": "Running"})
        netutil.wait_until(
            lambda: progress().get("remaining") == 0 and not progress().get("blocked"),
            120,
            "the resumed server to move too",
        )
        assert most[0] == 1, "a drain moves one server at a time from a host (by default)"
        for name, uid in uids.items():
            body = mbed.get("server", name, ns)
            assert body is not None
            host = body["status"]["nodeName"]
            assert host in ("host-b", "host-c"), (name, host)
            assert domains_for(mbed, ns, name) == [(host, uid)]
            netutil.wait_until(
                lambda h=host, u=uid, n=name: last_uptime(mbed, h, u) > started[n],
                60,
                f"{name} to count on {host}",
            )
            assert boots(mbed.console(host, uid)) == 0
        assert any(r == "Evacuated" for r, _ in events(mbed, "default", "Hypervisor", "host-a"))
    finally:
        patch = json.dumps({"spec": {"evacuate": False}})
        mbed.kubectl("patch", "hypervisor", "host-a", "--type", "merge", "-p", patch)
    netutil.wait_until(
        lambda: (
            not ((mbed.get("hypervisor", "host-a") or {}).get("status") or {}).get("evacuation")
        ),
        30,
        "the drain's progress to be dropped",
    )


# ----------------------------------------------------------------------------- cold / resize


def test_cold_migration_and_resize_move_the_disk(mbed: stack.Stack, ns: str) -> None:
    """A stopped Server moves by its disk (copied: host-a and host-c share nothing); changing
    a stopped Server's flavorRef resizes it by such a move, and it boots on the target with the
    new flavor and stays there; a running one is told to stop first. A ServerMigration that
    names a flavor the Server does not declare is refused (it would be resized back)."""
    apply(mbed, flavor("m1.bigger", vcpus=2, memory=192, disk=2))
    apply(mbed, flavor("m1.biggest", vcpus=2, memory=160, disk=3))
    uid = boot_on(mbed, ns, "vm", "host-a")
    helpers.patch(mbed, ns, "vm", {"powerState": "Stopped"})
    wait_server_phase(mbed, ns, "vm", "SHUTOFF")
    # Something only this server's disk holds: the guest prints its first bytes at boot.
    marker = mbed.workdir / "cold-marker.bin"
    marker.write_bytes(b"KUBENOVA-COLD-MOVED".ljust(512, b"\0"))
    overlay = f"/var/lib/kubenova/instances/{uid}-root.qcow2"
    write = ["qemu-io", "-f", "qcow2", "-c", f"write -s {marker} 0 512", overlay]
    subprocess.run(
        [*mbed.hosts["host-a"].nsenter(), *write],
        check=True,
        capture_output=True,
    )
    migrate(mbed, ns, "undeclared", "vm", flavorRef="m1.bigger")
    refused = wait_phase(mbed, ns, "undeclared", "Succeeded", "Failed", timeout=30)["status"]
    assert refused["phase"] == "Failed", refused
    assert refused["reason"] == "FlavorNotDeclared", refused
    assert "spec.flavorRef" in refused["message"], refused

    migrate(mbed, ns, "cold", "vm", targetNode="host-c")
    done = wait_phase(mbed, ns, "cold", "Succeeded", "Failed")
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["live"] is False and status["blockMigration"] is True
    assert status["progress"]["diskProcessedBytes"] > 0
    body = mbed.get("server", "vm", ns)
    assert body is not None
    assert body["status"]["nodeName"] == "host-c"
    assert body["status"]["flavor"]["name"] == "m1.tiny"
    assert target_files(mbed, "host-a", uid) == [], "the source kept the disk"
    assert not mbed.hosts["host-a"].has_domain(uid)

    # Resize a stopped Server by its flavor: a cold move by itself, once, and it stays.
    helpers.patch(mbed, ns, "vm", {"flavorRef": "m1.bigger"})

    def resized_to(name: str) -> bool:
        st = (mbed.get("server", "vm", ns) or {}).get("status") or {}
        return (st.get("flavor") or {}).get("name") == name and st.get("phase") == "SHUTOFF"

    netutil.wait_until(lambda: resized_to("m1.bigger"), 120, "the resize to m1.bigger")
    helpers.patch(mbed, ns, "vm", {"powerState": "Running"})
    wait_server_phase(mbed, ns, "vm", "ACTIVE")
    body = mbed.get("server", "vm", ns)
    assert body is not None and body["status"]["flavor"]["name"] == "m1.bigger"
    at = body["status"]["nodeName"]
    assert at in ("host-a", "host-b"), at
    console = mbed.wait_console(at, uid, "kubenova-uptime")
    assert "disk /dev/vda: KUBENOVA-COLD-MOVED" in console, console
    xml = mbed.hosts[at].virsh("dumpxml", uid)
    assert re.search(r"<vcpu[^>]*>2</vcpu>", xml) and "<memory unit='KiB'>196608<" in xml
    info = mbed.hosts[at].virsh("vol-info", f"{uid}-root.qcow2", "--pool", "kubenova")
    assert "2.00 GiB" in info, info
    moves = mbed.kubectl("get", "smig", "-n", ns, "-o", "json").stdout
    resizes = [m for m in json.loads(moves)["items"] if m["metadata"]["name"] != "undeclared"]
    assert [m["spec"].get("flavorRef") for m in resizes] == [None, "m1.bigger"], resizes

    # Resize by changing the flavor: waits for a stop, then moves by itself.
    helpers.patch(mbed, ns, "vm", {"flavorRef": "m1.biggest"})
    netutil.wait_until(
        lambda: any(r == "ResizeWaitsForStop" for r, _ in events(mbed, ns, "Server", "vm")),
        30,
        "the Server to be told to stop first",
    )
    helpers.patch(mbed, ns, "vm", {"powerState": "Stopped"})

    netutil.wait_until(lambda: resized_to("m1.biggest"), 120, "the resize to m1.biggest")
    body = mbed.get("server", "vm", ns)
    assert body is not None and body["status"]["nodeName"] != at
    assert body["status"]["flavor"]["memoryMiB"] == 160
    assert any(r == "Resizing" for r, _ in events(mbed, ns, "Server", "vm"))
    # The host it came back to takes it up (the move away from host-a holds it no more),
    # and deleting it is done there: no domain left anywhere, no finalizer stuck.
    back = body["status"]["nodeName"]
    netutil.wait_until(
        lambda: mbed.hosts[back].has_domain(uid), 60, f"the domain defined on {back} again"
    )
    mbed.kubectl("delete", "server", "vm", "-n", ns, "--timeout=60s", timeout=90)
    assert mbed.get("server", "vm", ns) is None
    assert [h for h, host in mbed.hosts.items() if host.has_domain(uid)] == []


def wait_server_phase(bed: stack.Stack, ns: str, name: str, phase: str) -> None:
    netutil.wait_until(
        lambda: ((bed.get("server", name, ns) or {}).get("status") or {}).get("phase") == phase,
        90,
        f"{name} to be {phase}",
    )
