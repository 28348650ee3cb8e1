"""The controller and agents on simulated hosts (libvirt's test driver): Servers go ACTIVE on
hosts with room, never beyond a host's capacity, wait as Unschedulable with the filter that
refused them, and get scheduled as soon as room appears."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator

import pytest
import yaml

from kubenova_devenv import kstatus, stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(240)

NS = "sim"
HOSTS = ("sim-a", "sim-b", "sim-c")


@pytest.fixture(scope="module")
def sim(api: stack.Stack) -> Iterator[stack.Stack]:
    """Three simulated hosts of 2 CPUs and 1 GiB each, the controller and their agents."""
    api.start_controller()
    for name in HOSTS:
        api.start_sim_agent(name, cpus=2, memory_mib=1024)
    api.kubectl("create", "namespace", NS, check=False)
    eventually(
        lambda: all(f"/{h}\n" in api.kubectl("get", "hv", "-o", "name").stdout for h in HOSTS),
        60,
        what="three Hypervisors registered",
    )
    yield api
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    for name in HOSTS:
        api.agents.pop(name).stop()
    assert api.controller is not None
    api.controller.stop()
    # The hosts are gone for good: take them out, or they stay Up for the heartbeat grace and
    # the next module's controller binds its Servers there (test_burst run after this one).
    api.kubectl("delete", "hv", *HOSTS)


def _servers(api: stack.Stack) -> list[dict]:
    return yaml.safe_load(api.kubectl("get", "srv", "-n", NS, "-o", "yaml").stdout)["items"]


def _flavor_and_image(api: stack.Stack) -> None:
    api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Flavor",
                "metadata": {"name": "sim.small"},
                "spec": {"vcpus": 1, "memoryMiB": 256, "diskGiB": 1},
            }
        ),
    )
    api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(api.image_manifest("sim-image", architecture="i686")),
    )  # what the test driver runs


def test_servers_fill_hosts_up_to_capacity_then_wait_and_then_run(sim: stack.Stack) -> None:
    _flavor_and_image(sim)
    # 3 hosts x 1024 MiB / 256 MiB = room for exactly 12 (RAM ratio 1.0, nothing reserved).
    docs = [
        yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Server",
                "metadata": {"name": f"s{i:02d}", "namespace": NS},
                "spec": {"flavorRef": "sim.small", "imageRef": "sim-image"},
            }
        )
        for i in range(14)
    ]
    sim.kubectl("apply", "-f", "-", stdin="---\n".join(docs))

    def settled() -> list[dict] | None:
        items = _servers(sim)
        active = [s for s in items if s.get("status", {}).get("phase") == "ACTIVE"]
        waiting = [s for s in items if condition(s, "Scheduled").get("reason") == "Unschedulable"]
        return items if len(active) == 12 and len(waiting) == 2 else None

    items = eventually(settled, 120, step=0.5, what="12 ACTIVE and 2 Unschedulable")
    per_host = collections.Counter(
        s["status"]["nodeName"] for s in items if s["status"].get("nodeName")
    )
    assert per_host == {"sim-a": 4, "sim-b": 4, "sim-c": 4}
    waiting = [s for s in items if condition(s, "Scheduled").get("reason") == "Unschedulable"]
    message = condition(waiting[0], "Scheduled")["message"]
    assert "No valid host was found among 3 hosts" in message
    assert "RamFilter rejected 3" in message

    def sim_a() -> dict:
        return yaml.safe_load(sim.kubectl("get", "hv", "sim-a", "-o", "yaml").stdout)

    eventually(
        lambda: sim_a()["status"]["used"]["memoryMiB"] == 1024,
        20,
        what="sim-a reporting its four guests' memory as used",
    )
    hv = sim_a()
    assert hv["status"]["runningVMs"] == 4
    assert hv["status"]["free"]["memoryMiB"] == 0 and hv["status"]["free"]["vcpus"] == 0
    assert hv["status"]["total"]["memoryMiB"] == 1024
    assert hv["status"]["hypervisorType"] == "TEST"

    # Deleting two bound Servers makes room: the waiting two run without anyone asking.
    bound = sorted(s["metadata"]["name"] for s in items if s["status"].get("nodeName"))
    sim.kubectl("delete", "srv", bound[0], bound[1], "-n", NS, "--timeout=60s", timeout=90)

    def all_active() -> bool:
        items = _servers(sim)
        return len(items) == 12 and all(s.get("status", {}).get("phase") == "ACTIVE" for s in items)

    eventually(all_active, 60, step=0.5, what="the two waiting Servers ACTIVE")


def test_pinned_host_and_unknown_host(sim: stack.Stack) -> None:
    _flavor_and_image(sim)
    sim.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", timeout=90)
    for name, host in (("pin-b", "sim-b"), ("pin-x", "sim-x")):
        sim.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": "compute.kubenova.io/v1alpha1",
                    "kind": "Server",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"flavorRef": "sim.small", "imageRef": "sim-image", "hostName": host},
                }
            ),
        )
    sim.kubectl("wait", "--for=condition=Ready", "srv/pin-b", "-n", NS, "--timeout=60s")
    pinned = yaml.safe_load(sim.kubectl("get", "srv", "pin-b", "-n", NS, "-o", "yaml").stdout)
    assert pinned["status"]["nodeName"] == "sim-b"

    def refused() -> dict:
        srv = yaml.safe_load(sim.kubectl("get", "srv", "pin-x", "-n", NS, "-o", "yaml").stdout)
        cond = condition(srv, "Scheduled")
        return cond if cond.get("reason") == "Unschedulable" else {}

    assert "HostNameFilter rejected 3" in eventually(refused, 30)["message"]


def test_servers_are_born_with_the_agents_finalizer_and_an_unbound_one_is_released(
    sim: stack.Stack,
) -> None:
    """Every Server gets the agents' finalizer at creation (deploy/admission's
    MutatingAdmissionPolicy), so the agent that runs it writes nothing to hold it; one deleted
    before any host took it is released by the controller (no agent ever will)."""
    _flavor_and_image(sim)
    for name, host in (("born-b", "sim-b"), ("born-x", "sim-x")):
        doc = {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"flavorRef": "sim.small", "imageRef": "sim-image", "hostName": host},
        }
        created = json.loads(
            sim.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(doc)).stdout
        )
        assert created["metadata"]["finalizers"] == ["compute.kubenova.io/domain"], created
    sim.kubectl("wait", "--for=condition=Ready", "srv/born-b", "-n", NS, "--timeout=60s")
    shown = ("get", "srv", "born-b", "-n", NS, "-o", "json", "--show-managed-fields")
    running = json.loads(sim.kubectl(*shown).stdout)
    # Nobody wrote the finalizer: no manager owns it (the agent's PATCH would own it).
    owners = [m["manager"] for m in running["metadata"]["managedFields"]
              if "f:finalizers" in m.get("fieldsV1", {}).get("f:metadata", {})]  # fmt: skip
    assert owners == [], owners

    def unschedulable() -> bool:
        srv = json.loads(sim.kubectl("get", "srv", "born-x", "-n", NS, "-o", "json").stdout)
        return condition(srv, "Scheduled").get("reason") == "Unschedulable"

    eventually(unschedulable, 30, what="born-x Unschedulable")
    started = time.monotonic()
    sim.kubectl("delete", "srv", "born-x", "-n", NS, "--timeout=30s", timeout=45)
    assert time.monotonic() - started < 15
    # The bound one goes through its agent, as always.
    sim.kubectl("delete", "srv", "born-b", "-n", NS, "--timeout=30s", timeout=45)


def _sample(text: str, name: str) -> float:
    """The value of sample ``name`` (with its labels) in Prometheus' text format; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_binds_phases_and_the_agents_work(sim: stack.Stack) -> None:
    """The controller's and the agents' /metrics say what happened: binds, scheduling
    outcomes and latency, Servers by phase, reconciles and the queue."""
    _flavor_and_image(sim)
    sim.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", timeout=90)
    before = sim.metrics("controller")
    reconciled = sum(
        _sample(sim.metrics(f"agent-{h}"), "kubenova_agent_reconciles_total") for h in HOSTS
    )
    for i in range(3):
        sim.kubectl(
            "apply", "-f", "-",
            stdin=yaml.safe_dump({
                "apiVersion": "compute.kubenova.io/v1alpha1", "kind": "Server",
                "metadata": {"name": f"m{i}", "namespace": NS},
                "spec": {"flavorRef": "sim.small", "imageRef": "sim-image"},
            }),
        )  # fmt: skip
    sim.kubectl("wait", "--for=condition=Ready", "srv", "--all", "-n", NS, "--timeout=60s")

    def counted() -> str | None:
        text = sim.metrics("controller")
        return text if _sample(text, 'kubenova_servers{phase="ACTIVE"}') >= 3 else None

    after = eventually(counted, 30, what="kubenova_servers counting the ACTIVE Servers")
    assert _sample(after, "kubenova_binds_total") == _sample(before, "kubenova_binds_total") + 3
    bound = 'kubenova_scheduling_outcomes_total{outcome="Bound"}'
    assert _sample(after, bound) == _sample(before, bound) + 3
    latency = "kubenova_scheduling_latency_seconds_count"
    assert _sample(after, latency) == _sample(before, latency) + 3
    # Set by every pass: the next one (within resync_seconds) finds nothing pending.
    eventually(
        lambda: _sample(sim.metrics("controller"), "kubenova_pending_servers") == 0,
        30,
        what="no pending Servers",
    )
    assert _sample(after, "process_resident_memory_bytes") > 0
    agents = [sim.metrics(f"agent-{h}") for h in HOSTS]
    assert sum(_sample(t, "kubenova_agent_reconciles_total") for t in agents) >= reconciled + 3
    assert all("kubenova_agent_workqueue_depth " in t for t in agents)
    assert all("kubenova_agent_image_cache_bytes " in t for t in agents)


def test_anti_affinity_group_of_four_over_three_hosts(sim: stack.Stack) -> None:
    _flavor_and_image(sim)
    sim.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", timeout=90)
    sim.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "ServerGroup",
                "metadata": {"name": "apart", "namespace": NS},
                "spec": {"policy": "anti-affinity"},
            }
        ),
    )
    docs = [
        yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Server",
                "metadata": {"name": f"g{i}", "namespace": NS},
                "spec": {
                    "flavorRef": "sim.small",
                    "imageRef": "sim-image",
                    "serverGroupRef": "apart",
                },
            }
        )
        for i in range(4)
    ]
    sim.kubectl("apply", "-f", "-", stdin="---\n".join(docs))

    def settled() -> list[dict] | None:
        items = _servers(sim)
        active = [s for s in items if s.get("status", {}).get("phase") == "ACTIVE"]
        waiting = [s for s in items if condition(s, "Scheduled").get("reason") == "Unschedulable"]
        return items if len(active) == 3 and len(waiting) == 1 else None

    items = eventually(settled, 60, step=0.5, what="3 ACTIVE apart and 1 Unschedulable")
    hosts = [s["status"]["nodeName"] for s in items if s["status"].get("nodeName")]
    assert sorted(hosts) == ["sim-a", "sim-b", "sim-c"]
    waiting = next(s for s in items if not s["status"].get("nodeName"))
    assert "ServerGroupAntiAffinityFilter rejected 3" in condition(waiting, "Scheduled")["message"]
    sim.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", timeout=90)


def test_a_host_whose_agent_stops_is_marked_down_and_gets_nothing(sim: stack.Stack) -> None:
    _flavor_and_image(sim)
    sim.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", timeout=90)
    sim.agents["sim-c"].kill()
    stopped = time.monotonic()

    def up_c() -> str:
        hv = yaml.safe_load(sim.kubectl("get", "hv", "sim-c", "-o", "yaml").stdout)
        return condition(hv, "Up").get("status", "")

    eventually(
        lambda: up_c() == "False",
        sim.heartbeat_grace_seconds + 30,
        step=0.5,
        what="sim-c marked down",
    )
    took = time.monotonic() - stopped
    assert took < sim.heartbeat_grace_seconds + 15, took
    events = sim.kubectl(
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=sim-c",
        "-o",
        "jsonpath={range .items[*]}{.reason}{' '}{end}",
    ).stdout.split()
    assert "HostDown" in events
    # What GitOps tools (kstatus) say of a dead host: Failed, with why.
    down = kstatus.compute(sim.get("hv", "sim-c") or {})
    assert down["status"] == kstatus.FAILED and "sim-c" in down["message"], down
    # No new Server lands there, even asked for by name.
    sim.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Server",
                "metadata": {"name": "to-c", "namespace": NS},
                "spec": {"flavorRef": "sim.small", "imageRef": "sim-image", "hostName": "sim-c"},
            }
        ),
    )

    def refused() -> dict:
        srv = yaml.safe_load(sim.kubectl("get", "srv", "to-c", "-n", NS, "-o", "yaml").stdout)
        cond = condition(srv, "Scheduled")
        return cond if cond.get("reason") == "Unschedulable" else {}

    assert "ComputeFilter rejected 1" in eventually(refused, 30)["message"]
    assert kstatus.status(sim.get("srv", "to-c", NS)) == kstatus.FAILED
    # The agent comes back: the host is up again and the waiting Server runs there.
    sim.start_sim_agent("sim-c", cpus=2, memory_mib=1024)
    eventually(lambda: up_c() == "True", 60, step=0.5, what="sim-c up again")
    sim.kubectl("wait", "--for=condition=Ready", "srv/to-c", "-n", NS, "--timeout=60s")
    assert kstatus.status(sim.get("hv", "sim-c")) == kstatus.CURRENT
    assert kstatus.status(sim.get("srv", "to-c", NS)) == kstatus.CURRENT


def test_a_secure_boot_image_waits_for_a_host_with_that_firmware(sim: stack.Stack) -> None:
    """The simulated hosts publish BIOS only (libvirt's test driver has no OVMF): a Server of
    a secure-boot image is Unschedulable, and the message says what the image needs."""
    _flavor_and_image(sim)
    hv = yaml.safe_load(sim.kubectl("get", "hv", "sim-a", "-o", "yaml").stdout)
    assert hv["status"]["firmwares"] == ["bios"]
    image = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": "sim-secure"},
        "spec": {
            "source": {"disk": {"url": "http://images.example/sb.qcow2", "sha256": "a" * 64}},
            "architecture": "i686",
            "properties": {"hw_firmware_type": "uefi", "os_secure_boot": "required"},
        },
    }
    server = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": "secure", "namespace": NS},
        "spec": {"flavorRef": "sim.small", "imageRef": "sim-secure"},
    }
    sim.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([image, server]))

    def refused() -> dict:
        srv = yaml.safe_load(sim.kubectl("get", "srv", "secure", "-n", NS, "-o", "yaml").stdout)
        cond = condition(srv, "Scheduled")
        return cond if cond.get("reason") == "Unschedulable" else {}

    message = eventually(refused, 30)["message"]
    assert "ImagePropertiesFilter rejected 3" in message, message
    assert "firmware uefi-secure-boot" in message, message
    sim.kubectl("delete", "srv", "secure", "-n", NS, "--timeout=60s")


def test_a_quota_burst_never_overshoots(sim: stack.Stack) -> None:
    """Issue 13: 9 Servers applied at once into a namespace whose ComputeQuota allows 5 vCPUs
    (each needs 1): exactly 5 are ever bound, the others wait as QuotaExceeded, and deleting
    one lets exactly one more in."""
    _flavor_and_image(sim)
    ns = "sim-quota"
    sim.kubectl("create", "namespace", ns, check=False)
    quota = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ComputeQuota",
        "metadata": {"name": "cores", "namespace": ns},
        "spec": {"vcpus": 5, "servers": 100},
    }
    sim.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(quota))
    docs = [
        {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": f"q{i}", "namespace": ns},
            "spec": {"flavorRef": "sim.small", "imageRef": "sim-image"},
        }
        for i in range(9)
    ]
    sim.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    most = 0

    def items() -> list[dict]:
        out = yaml.safe_load(sim.kubectl("get", "srv", "-n", ns, "-o", "yaml").stdout)["items"]
        return list(out)

    def settled() -> list[dict] | None:
        nonlocal most
        now = items()
        bound = [s for s in now if (s.get("status") or {}).get("nodeName")]
        most = max(most, len(bound))
        over = [s for s in now if condition(s, "Scheduled").get("reason") == "QuotaExceeded"]
        return now if len(bound) == 5 and len(over) == len(now) - 5 else None

    now = eventually(settled, 60, step=0.2, what="5 bound and 4 QuotaExceeded")
    for _ in range(10):  # and it stays so
        settled()
        time.sleep(0.3)
    assert most == 5, f"{most} bound at once: the quota was overshot"
    waiting = next(s for s in now if not s["status"].get("nodeName"))
    assert "5 of 5 vCPUs in use" in condition(waiting, "Scheduled")["message"]
    bound = sorted(s["metadata"]["name"] for s in now if s["status"].get("nodeName"))
    sim.kubectl("delete", "srv", bound[0], "-n", ns, "--timeout=60s", timeout=90)
    most = 0
    eventually(settled, 30, step=0.2, what="one more bound after a delete")
    assert most <= 5
    sim.kubectl("delete", "servers", "--all", "-n", ns, "--timeout=60s", timeout=90)
    sim.kubectl("delete", "cquota", "cores", "-n", ns)


def test_a_rebuild_pins_the_new_image_in_the_status(sim: stack.Stack) -> None:
    """Issue 15: after a rebuild from another Image, the Server's status names it both as
    what runs (``imageRef``, the agent's) and as the bits it is built from (``image``, pinned
    by the controller): a later rescue, move or evacuation uses the new Image's bits."""
    _flavor_and_image(sim)
    # Another Image with other bits: a UEC kernel and ramdisk without a disk.
    other = sim.image_manifest("sim-image-nodisk", architecture="i686", with_disk=False)
    sim.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))
    server = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": "rebuilt", "namespace": NS},
        "spec": {"flavorRef": "sim.small", "imageRef": "sim-image"},
    }
    sim.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(server))
    sim.kubectl("wait", "--for=condition=Ready", "srv/rebuilt", "-n", NS, "--timeout=60s")

    def get() -> dict:
        return dict(
            yaml.safe_load(sim.kubectl("get", "srv", "rebuilt", "-n", NS, "-o", "yaml").stdout)
        )

    before = get()
    assert before["status"]["image"]["name"] == "sim-image"
    assert before["status"]["image"]["disk"] is not None
    patch = {"spec": {"imageRef": "sim-image-nodisk", "rebuildRequestedAt": "2026-11-30T01:00:00Z"}}
    sim.kubectl("patch", "srv", "rebuilt", "-n", NS, "--type", "merge", "-p", json.dumps(patch))

    def rebuilt() -> dict | None:
        status = get()["status"]
        done = (
            status.get("imageRef") == "sim-image-nodisk"
            and status.get("image", {}).get("name") == "sim-image-nodisk"
            and str(status.get("observedRebuildRequestedAt")).startswith("2026-11-30T01:00:00")
            and condition({"status": status}, "Ready").get("status") == "True"
        )
        return status if done else None

    status = eventually(rebuilt, 60, what="the rebuild done and the new image pinned")
    assert status["image"].get("disk") is None  # the new Image's bits, not the old ones renamed
    assert status["image"]["kernel"] == other["spec"]["source"]["uec"]["kernel"]
    after = get()
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert status["nodeName"] == before["status"]["nodeName"]
    assert status["flavor"] == before["status"]["flavor"]
    assert condition(after, "Scheduled") == condition(before, "Scheduled")  # kept as it was
    reasons = sim.kubectl(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=rebuilt",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip
    assert "ImagePinned" in reasons, reasons
    sim.kubectl("delete", "srv", "rebuilt", "-n", NS, "--timeout=60s")
