"""The agent's decisions on fakes of its own contracts (tests/fakes.py), in milliseconds: what
it does to a guest for each declared power state, restart policy, reboot and rescue, what it
reports in status (and that it does not write what says the same), how a source agent that
restarted mid-migration finds out how its migration ended, and the target's ordered steps.
The same behaviour is proven on real libvirtd in tests/e2e."""

from __future__ import annotations

import datetime as dt
import hashlib
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

from kubenova_agent import (
    bootwatch,
    capacity,
    migration_source,
    migration_status,
    migration_target,
    migrations,
    reconcile,
    restartbackoff,
)
from kubenova_agent.driver import CpuReason, CpuRefusal, JobStats, State, StopReason
from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.domain_xml import VirtType, cpu_element
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, constants, policies
from kubenova_api.kube import RetryLater
from kubenova_api.resources import (
    Hypervisor,
    Image,
    Phase,
    PinnedImage,
    Server,
    ServerMigration,
    TargetStep,
)
from tests.fakes import FakeGuests, FakeImages, FakeKube, FakeMigrations, FakeStorage

UID = "6f1c0000-0000-4000-8000-000000000001"
DISK_URL = "http://images.test/disk.raw"
DISK = b"KUBENOVA-DISK".ljust(4096, b"\0")


class Bed:
    """An agent's dependencies, all fakes, and one Server bound to its host."""

    def __init__(self, tmp: pathlib.Path, sha: str | None = None) -> None:
        self.settings = AgentSettings(
            host_name="host-a", state_dir=str(tmp / "state"), virt_type="qemu"
        )
        self.kube = FakeKube()
        self.guests = FakeGuests()
        self.storage = FakeStorage(tmp / "instances")
        self.images = FakeImages(tmp / "images", {DISK_URL: DISK})
        self.deps = reconcile.Deps(
            self.settings, self.kube, self.guests, self.storage, self.images, VirtType.qemu
        )
        self.kube.put(
            Image.parse(
                {
                    "metadata": {"name": "img"},
                    "spec": {
                        "source": {
                            "disk": {
                                "url": DISK_URL,
                                "sha256": sha or hashlib.sha256(DISK).hexdigest(),
                                "format": "raw",
                            }
                        }
                    },
                }
            )
        )

    def server(self, **spec: Any) -> Server:
        current = self.kube.get(Server, "web", "ns")
        if current is None:
            current = Server.parse(
                {
                    "metadata": {
                        "name": "web",
                        "namespace": "ns",
                        "uid": UID,
                        "generation": 1,
                        "resourceVersion": "1",
                    },
                    "spec": {"flavorRef": "m1", "imageRef": "img"},
                    "status": {
                        "nodeName": "host-a",
                        "flavor": {"name": "m1", "vcpus": 1, "memoryMiB": 128, "diskGiB": 1},
                    },
                }
            )
        if spec:
            body = current.model_dump(mode="json")
            body["spec"].update(
                {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in spec.items()}
            )
            body["metadata"]["generation"] += 1
            current = Server.parse(body)
        self.kube.put(current)
        return current

    def reconcile(self, **spec: Any) -> Server:
        """Declare ``spec``, reconcile until nothing changes; the Server as it reads then."""
        self.server(**spec)
        for _ in range(5):
            before = len(self.kube.writes), len(self.guests.calls)
            server = self.kube.get(Server, "web", "ns")
            assert server is not None
            reconcile.reconcile_server(self.deps, server)
            if (len(self.kube.writes), len(self.guests.calls)) == before:
                break
        out = self.kube.get(Server, "web", "ns")
        assert out is not None
        return out


def ready(server: Server) -> common.Condition:
    cond = common.get_condition(server.status.conditions, "Ready")
    assert cond is not None
    return cond


def kstatus_says(server: Server) -> tuple[str, str]:
    """The agent's conditions read as kstatus reads them — observedGeneration, then the
    abnormal-true Reconciling and Stalled, then Ready — as (what it concludes, the reason).
    The rules are checked against the library itself in tests/integration/test_gitops_status.py.
    """
    if server.status.observedGeneration != server.metadata.generation:
        return "InProgress", "LatestGenerationNotObserved"
    for type_, verdict in (("Reconciling", "InProgress"), ("Stalled", "Failed")):
        cond = common.get_condition(server.status.conditions, type_)
        assert cond is not None, f"{type_} is written in every report"
        if cond.status == "True":
            return verdict, cond.reason
    return ("Current" if ready(server).status == "True" else "InProgress"), ready(server).reason


@pytest.fixture
def bed(tmp_path: pathlib.Path) -> Iterator[Bed]:
    b = Bed(tmp_path)
    yield b
    assert_within_the_admission_policies(b.kube)


def assert_within_the_admission_policies(kube: FakeKube) -> None:
    """Every status the agent wrote in a test stays within what ``deploy/policies`` lets an
    agent write (a field the agent starts to write must be added there, or the API server
    refuses the agent's every write)."""
    for write in kube.writes:
        fields = set(write.status)
        if write.ref.plural == constants.SERVERS:
            assert fields <= policies.SERVER_AGENT_FIELDS, fields - policies.SERVER_AGENT_FIELDS
            kinds = {c["type"] for c in write.status.get("conditions", [])}
            assert kinds <= set(policies.SERVER_AGENT_CONDITIONS), kinds
        elif write.ref.plural == constants.SERVERMIGRATIONS:
            assert fields <= policies.MIGRATION_SOURCE_FIELDS or (
                fields <= policies.MIGRATION_TARGET_FIELDS
            ), fields


def test_a_new_server_is_built_started_and_reported_once(bed: Bed) -> None:
    server = bed.reconcile()
    assert bed.guests.domains[UID].state is State.running
    assert server.status.phase is Phase.ACTIVE
    assert ready(server).reason == "Running" and ready(server).status == "True"
    assert kstatus_says(server) == ("Current", "Running")
    assert constants.FINALIZER_DOMAIN in server.metadata.finalizers
    # No Started Event for the first boot: the status written with it says just that
    # (README, "Sizing the control plane": in a burst, about 12 % of the API server's CPU).
    assert bed.kube.reasons() == ["ImageFetched"]
    assert len(bed.kube.writes) == 1 and bed.kube.writes[0].force  # the host takes phase over
    writes, events = len(bed.kube.writes), len(bed.kube.events)
    bed.reconcile()
    assert (len(bed.kube.writes), len(bed.kube.events)) == (writes, events), "nothing new: no write"


@pytest.mark.parametrize(
    ("declared", "start", "state", "phase", "event"),
    [
        ("Stopped", State.running, State.shutoff, Phase.SHUTOFF, "Stopped"),
        ("Paused", State.running, State.paused, Phase.PAUSED, "Paused"),
        ("Suspended", State.running, State.suspended, Phase.SUSPENDED, "Suspended"),
        ("Suspended", State.paused, State.suspended, Phase.SUSPENDED, "Suspended"),
        ("Running", State.paused, State.running, Phase.ACTIVE, "Unpaused"),
        ("Running", State.suspended, State.running, Phase.ACTIVE, "Resumed"),
        ("Stopped", State.paused, State.shutoff, Phase.SHUTOFF, "Stopped"),
        ("Stopped", State.suspended, State.shutoff, Phase.SHUTOFF, "Stopped"),
    ],
)
def test_each_declared_power_state_is_reached(
    bed: Bed, declared: str, start: str, state: State, phase: Phase, event: str
) -> None:
    bed.reconcile()
    bed.guests._set(UID, State(start))
    server = bed.reconcile(powerState=declared)
    assert bed.guests.domains[UID].state is state
    assert server.status.phase is phase
    assert bed.kube.reasons()[-1] == event
    converged = common.get_condition(server.status.conditions, "Converged")
    assert converged is not None and converged.status == "True"
    # What it declares, it is: Ready (a stopped, paused or suspended server too).
    assert ready(server).status == "True" and "as declared" in ready(server).message
    assert kstatus_says(server)[0] == "Current"


def test_a_stopped_server_started_again_records_that_it_started(bed: Bed) -> None:
    """A start after the first boot is history the status does not keep: it gets its Event."""
    bed.reconcile()
    stopped = bed.reconcile(powerState="Stopped")
    assert stopped.status.phase is Phase.SHUTOFF and bed.kube.reasons()[-1] == "Stopped"
    server = bed.reconcile(powerState="Running")
    assert bed.guests.domains[UID].state is State.running
    assert server.status.phase is Phase.ACTIVE
    assert bed.kube.reasons() == ["ImageFetched", "Stopped", "Started"]


def test_a_server_created_stopped_is_built_and_shut_off_not_left_in_build(bed: Bed) -> None:
    """A domain defined and left off as declared is a Server built: SHUTOFF and Ready, not a
    BUILD that never ends. Its first start is a person's start: it is recorded."""
    server = bed.reconcile(powerState="Stopped")
    assert bed.guests.domains[UID].state is State.shutoff
    assert bed.guests.domains[UID].stop_reason is StopReason.never_started
    assert server.status.phase is Phase.SHUTOFF
    assert ready(server).status == "True" and "as declared (stopped)" in ready(server).message
    assert kstatus_says(server)[0] == "Current"
    server = bed.reconcile(powerState="Running")
    assert server.status.phase is Phase.ACTIVE
    assert bed.kube.reasons() == ["ImageFetched", "Started"]


def test_a_stopped_server_stays_shut_off_when_libvirtd_forgets_why(bed: Bed) -> None:
    """libvirt keeps a shut-off domain's reason only while libvirtd runs: after a restart (or
    a host's reboot) a stopped guest reads as never started. The Server said SHUTOFF before:
    it still does, and its next start is recorded like any other."""
    bed.reconcile()
    bed.reconcile(powerState="Stopped")
    bed.guests._set(UID, State.shutoff, StopReason.never_started)  # libvirtd restarted
    bed.deps.written.clear()  # and the agent with it: only the Server's status remembers
    server = bed.reconcile()
    assert server.status.phase is Phase.SHUTOFF
    assert ready(server).status == "True"
    server = bed.reconcile(powerState="Running")
    assert server.status.phase is Phase.ACTIVE
    assert bed.kube.reasons() == ["ImageFetched", "Stopped", "Started"]


def test_a_running_server_whose_host_rebooted_is_started_again_and_that_is_recorded(
    bed: Bed,
) -> None:
    bed.reconcile()
    bed.guests._set(UID, State.shutoff, StopReason.never_started)  # the host rebooted
    bed.deps.written.clear()
    server = bed.reconcile()
    assert bed.guests.domains[UID].state is State.running
    assert server.status.phase is Phase.ACTIVE
    assert bed.kube.reasons() == ["ImageFetched", "Started"]


@pytest.mark.parametrize("declared", ["Paused", "Suspended"])
def test_a_stopped_server_cannot_be_paused_or_suspended(bed: Bed, declared: str) -> None:
    bed.reconcile(powerState="Stopped")
    server = bed.reconcile(powerState=declared)
    assert bed.guests.domains[UID].state is State.shutoff
    converged = common.get_condition(server.status.conditions, "Converged")
    assert converged is not None and converged.reason == "ActionNotAllowed"
    assert "cannot" in converged.message and "SHUTOFF" in converged.message
    assert kstatus_says(server) == ("Failed", "ActionNotAllowed")
    assert ready(server).status == "False"
    assert bed.kube.reasons().count("ActionNotAllowed") == 1
    bed.reconcile()
    assert bed.kube.reasons().count("ActionNotAllowed") == 1, "said once, not on every pass"


def test_a_guest_that_ignores_the_power_button_is_forced_off(bed: Bed) -> None:
    bed.reconcile()
    bed.guests.answers_acpi = False
    bed.reconcile(powerState="Stopped", shutdownTimeoutSeconds=0)
    assert bed.guests.domains[UID].state is State.shutoff
    assert "forced off after 0s" in bed.kube.events[-1][2]


@pytest.mark.parametrize(
    ("policy", "how", "restarted"),
    [
        ("Always", StopReason.shutdown, True),
        ("OnFailure", StopReason.shutdown, False),
        ("OnFailure", StopReason.crashed, True),
        ("Never", StopReason.crashed, False),
    ],
)
def test_restart_policy(bed: Bed, policy: str, how: StopReason, restarted: bool) -> None:
    bed.reconcile(restartPolicy=policy)
    bed.guests.stops_by_itself(UID, how)
    server = bed.reconcile()
    assert (bed.guests.domains[UID].state is State.running) is restarted
    assert server.status.restartCount == (1 if restarted else 0)
    assert how.value in bed.kube.reasons(), "the stop is told before anything else"
    if not restarted:
        assert ready(server).reason == how.value and server.status.phase is Phase.SHUTOFF
        # Declared Running, off, and kept off by its policy: kubenova will not do it.
        assert kstatus_says(server) == ("Failed", how.value)
    else:
        assert kstatus_says(server) == ("Current", "Running")


class RefusingCpus:
    """A host whose libvirt knows no CPU model the Flavor may name."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def check(self, cpu_xml: str | None, arch: str, virt_type: str) -> CpuRefusal | None:
        self.asked.append(cpu_xml)
        return CpuRefusal(CpuReason.unknown_model, "libvirt does not know the CPU model Bogus")


def test_an_unknown_cpu_model_is_an_error_and_an_event_before_anything_is_fetched(
    bed: Bed,
) -> None:
    cpus = RefusingCpus()
    bed.deps.guest_cpu = lambda _server: cpu_element("custom", "Bogus")
    bed.deps.cpus = cpus
    server = bed.reconcile()
    assert server.status.phase is Phase.ERROR
    assert ready(server).reason == "CPUModelUnknown" and "Bogus" in ready(server).message
    assert bed.kube.reasons() == ["CPUModelUnknown"], "one Warning Event, said once"
    assert bed.images.fetched == [] and ("define", UID) not in bed.guests.calls
    assert len(cpus.asked) == 1, "permanent: not asked again while the spec is the same"


def test_a_start_that_libvirt_refuses_is_a_condition_and_an_event_then_retried(bed: Bed) -> None:
    bed.guests.fail["start"] = errors.HypervisorError("internal error: qemu died at start")
    for _ in range(3):
        server = bed.server()
        with pytest.raises(RetryLater):  # the work queue backs the key off
            reconcile.reconcile_server(bed.deps, server)
    server = bed.server()
    assert ready(server).reason == "StartFailed" and "qemu died" in ready(server).message
    assert server.status.phase is Phase.BUILD
    assert bed.kube.reasons().count("StartFailed") == 1, "told once, not on every retry"
    del bed.guests.fail["start"]
    server = bed.reconcile()
    assert server.status.phase is Phase.ACTIVE and ready(server).reason == "Running"


def test_a_long_soft_stop_holds_no_worker_and_is_capped_by_the_host(bed: Bed) -> None:
    bed.reconcile()
    bed.guests.answers_acpi = False
    server = bed.server(powerState="Stopped", shutdownTimeoutSeconds=3600)
    again = reconcile.reconcile_server(bed.deps, server)
    assert again is not None and 0 < again <= 10, "comes back later instead of sleeping"
    server = bed.server()
    converged = common.get_condition(server.status.conditions, "Converged")
    assert converged is not None and converged.reason == "Stopping"
    # Still running while declared Stopped: not Ready, Reconciling.
    assert ready(server).status == "False" and ready(server).reason == "Running"
    assert kstatus_says(server) == ("InProgress", "Stopping")
    assert bed.kube.reasons()[-1] == "Stopping"
    assert "the host's maximum" in bed.kube.events[-1][2]  # 3600 s > the default 600 s
    bed.guests.stops_by_itself(UID, StopReason.shutdown)
    server = bed.reconcile()
    assert server.status.phase is Phase.SHUTOFF and bed.kube.reasons()[-1] == "Stopped"
    assert kstatus_says(server) == ("Current", "Shutoff")
    assert ("destroy", UID) not in bed.guests.calls, "it went off by itself: never forced"


def test_a_guest_that_powers_itself_off_in_a_loop_backs_off(bed: Bed) -> None:
    now = [1000.0]
    bed.deps.restarts = restartbackoff.RestartBackoff(clock=lambda: now[0])
    bed.reconcile(restartPolicy="Always")
    bed.guests.stops_by_itself(UID, StopReason.shutdown)
    bed.reconcile()
    assert bed.guests.domains[UID].state is State.running, "the first restart is at once"
    now[0] += 1
    bed.guests.stops_by_itself(UID, StopReason.shutdown)
    server = bed.server()
    again = reconcile.reconcile_server(bed.deps, server)
    server = bed.reconcile()
    assert bed.guests.domains[UID].state is State.shutoff, "not restarted at once again"
    assert again is not None and 9 <= again <= 10
    assert ready(server).reason == "RestartBackOff" and "back-off 10s" in ready(server).message
    assert kstatus_says(server) == ("Failed", "RestartBackOff")
    assert "RestartBackOff" in bed.kube.reasons()
    now[0] += 10
    server = bed.reconcile()
    assert bed.guests.domains[UID].state is State.running
    assert server.status.restartCount == 2


@pytest.mark.parametrize("shared", [False, True])
def test_a_server_evacuated_from_a_dead_host_says_how_it_was_rebuilt(
    bed: Bed, shared: bool
) -> None:
    server = bed.server()
    body = server.model_dump(mode="json")
    body["status"]["evacuatedFrom"] = "host-dead"
    bed.kube.put(Server.parse(body))
    if shared:  # the instances folder is shared with the dead host: its disk is here
        bed.storage.sizes[f"{UID}-root.qcow2"] = 1 << 30
    server = bed.reconcile()
    assert server.status.phase is Phase.ACTIVE
    assert server.status.diskRebuilt is (not shared)
    reason = "RebuiltFromSharedDisk" if shared else "RebuiltFromImage"
    assert bed.kube.reasons().count(reason) == 1
    assert "host-dead" in next(m for _, r, m in bed.kube.events if r == reason)
    bed.reconcile(powerState="Stopped")
    server = bed.reconcile(powerState="Running")
    assert server.status.diskRebuilt is (not shared), "kept in every later write"
    assert bed.kube.reasons().count(reason) == 1


def test_a_pinned_server_is_built_from_its_pinned_bits_never_by_name(bed: Bed) -> None:
    server = bed.server()
    image = bed.kube.get(Image, "img")
    assert image is not None
    body = server.model_dump(mode="json")
    body["status"]["image"] = PinnedImage.of("img", image.spec).model_dump(mode="json")
    bed.kube.put(Server.parse(body))
    # The Image of that name was deleted and made again with other bits.
    bad = image.model_dump(mode="json")
    bad["spec"]["source"]["disk"] = {"url": "http://images.test/other.raw", "sha256": "1" * 64}
    bed.kube.put(Image.parse(bad))
    server = bed.reconcile()
    assert server.status.phase is Phase.ACTIVE
    assert bed.images.fetched == [DISK_URL]
    server = bed.reconcile(rescue={"imageRef": None})  # rescue with its own image: the pin
    assert server.status.phase is Phase.RESCUE and bed.images.fetched == [DISK_URL]


def test_a_reboot_request_is_acted_on_once(bed: Bed) -> None:
    bed.reconcile()
    asked = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    server = bed.reconcile(rebootRequestedAt=asked)
    assert server.status.observedRebootRequestedAt == asked
    assert bed.kube.reasons().count("Rebooted") == 1
    assert ("request_shutdown", UID) in bed.guests.calls  # soft: the power button first
    bed.reconcile()
    assert bed.kube.reasons().count("Rebooted") == 1


def test_rescue_and_unrescue(bed: Bed) -> None:
    bed.reconcile()
    server = bed.reconcile(rescue={"imageRef": None})
    assert server.status.phase is Phase.RESCUE and ready(server).reason == "Rescued"
    server = bed.reconcile(rescue=None)
    assert server.status.phase is Phase.ACTIVE
    assert bed.kube.reasons()[-2:] == ["Rescued", "Unrescued"]


def _image_with(bed: Bed, name: str, **properties: str) -> None:
    image = bed.kube.get(Image, "img")
    assert image is not None
    body = image.model_dump(mode="json", exclude_none=True)
    body["metadata"]["name"] = name
    body["spec"]["properties"] = properties
    bed.kube.put(Image.parse(body))


def test_image_properties_decide_firmware_machine_bus_rng_and_video(bed: Bed) -> None:
    """A UEFI image gets OVMF with a variable store of the Server's own in the storage pool; a
    BIOS rescue image of it boots without one, and unrescue brings the same store back."""
    _image_with(bed, "img", hw_firmware_type="uefi", hw_disk_bus="scsi", hw_rng_model="virtio")
    _image_with(bed, "bios-rescue", hw_firmware_type="bios", hw_video_model="vga")
    bed.reconcile()
    xml = etree.fromstring(bed.guests.domains[UID].xml.encode())
    nvram = str(pathlib.Path(bed.settings.instances_dir) / f"{UID}-nvram.fd")
    assert xml.find("os").get("firmware") == "efi"
    assert xml.findtext("os/nvram") == nvram
    assert xml.find("os/type").get("machine") == "q35"  # UEFI's default machine
    assert [f.get("enabled") for f in xml.findall("os/firmware/feature")] == ["no"]
    targets = [(t.get("dev"), t.get("bus")) for t in xml.findall("devices/disk/target")]
    assert targets == [("sda", "scsi"), ("vda", "virtio")]  # the config drive stays on virtio
    assert xml.find("devices/rng") is not None
    bed.reconcile(rescue={"imageRef": "bios-rescue"})
    xml = etree.fromstring(bed.guests.domains[UID].xml.encode())
    assert xml.find("os").get("firmware") is None and xml.find("os/nvram") is None
    targets = [(t.get("dev"), t.get("bus")) for t in xml.findall("devices/disk/target")]
    assert targets == [("vda", "virtio"), ("vdb", "virtio"), ("vdc", "virtio")]
    assert xml.find("devices/video/model").get("type") == "vga"
    bed.reconcile(rescue=None)
    xml = etree.fromstring(bed.guests.domains[UID].xml.encode())
    assert xml.findtext("os/nvram") == nvram


def test_a_rebuild_request_recreates_disks_once_and_reports_the_new_image(bed: Bed) -> None:
    first = bed.reconcile()
    assert first.status.imageRef == "img" and first.status.phase is Phase.ACTIVE
    _image_with(bed, "img2", hw_firmware_type="uefi")
    drive = pathlib.Path(bed.storage.folder) / f"{UID}-config.iso"
    drive.write_bytes(b"old")  # rewritten by the rebuild, not kept
    asked = dt.datetime(2026, 11, 29, 22, 0, tzinfo=dt.UTC)
    server = bed.reconcile(imageRef="img2", rebuildRequestedAt=asked)
    assert server.status.imageRef == "img2" and server.status.phase is Phase.ACTIVE
    assert server.status.observedRebuildRequestedAt == asked
    assert server.metadata.uid == UID and server.status.nodeName == "host-a"
    assert drive.read_bytes() != b"old"
    xml = etree.fromstring(bed.guests.domains[UID].xml.encode())
    assert xml.find("os").get("firmware") == "efi"  # the new image's hardware
    assert bed.guests.domains[UID].state is State.running
    bed.reconcile()
    assert bed.kube.reasons().count("Rebuilt") == 1  # once per request


def test_a_guest_whose_firmware_finds_nothing_to_boot_is_not_ready(bed: Bed) -> None:
    bed.deps.boots = bootwatch.BootWatch(timeout=60)
    console = pathlib.Path(reconcile.console_path(bed.settings, UID))
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text("No bootable device.\n")  # an earlier boot's: not this one's
    server = bed.reconcile()
    assert server.status.phase is Phase.ACTIVE and ready(server).reason == "Running"
    with console.open("a") as f:
        f.write("SeaBIOS\nBooting from Hard Disk...\nBoot failed: not a bootable disk\n")
    server = bed.reconcile()
    assert ready(server).status == "False" and ready(server).reason == "BootFailed"
    assert kstatus_says(server) == ("Failed", "BootFailed")
    assert "no boot loader on the disk" in ready(server).message
    assert bed.kube.reasons().count("BootFailed") == 1
    # A reboot is a new boot: watched afresh, the old failure forgotten.
    server = bed.reconcile(
        rebootRequestedAt=dt.datetime(2026, 11, 29, 23, 0, tzinfo=dt.UTC), rebootType="Hard"
    )
    assert ready(server).reason == "Running"


def test_boot_failures_read_from_the_console() -> None:
    assert bootwatch.failure_in("BdsDxe: No bootable option or device was found.\r\n") == (
        "the UEFI firmware found no bootable option or device"
    )
    assert "secure boot" in (bootwatch.failure_in("... Access Denied ...") or "")
    assert bootwatch.failure_in("KUBENOVA-GUEST-UP\nkubenova-uptime 3.2\n") is None


def test_a_checksum_mismatch_is_permanent_until_the_spec_changes(tmp_path: pathlib.Path) -> None:
    bed = Bed(tmp_path, sha="0" * 64)
    server = bed.reconcile()
    assert server.status.phase is Phase.ERROR
    assert ready(server).reason == "ImageChecksumMismatch"
    assert kstatus_says(server) == ("Failed", "ImageChecksumMismatch")
    assert UID not in bed.guests.domains
    writes = len(bed.kube.writes)
    bed.reconcile()
    assert len(bed.kube.writes) == writes, "not retried while the spec is the same"


def test_deleting_removes_the_guest_its_disks_and_the_finalizer(bed: Bed) -> None:
    server = bed.reconcile()
    gone = server.model_copy(
        update={"metadata": server.metadata.model_copy(update={"deletionTimestamp": common.now()})}
    )
    reconcile.reconcile_server(bed.deps, gone)
    assert UID not in bed.guests.domains
    assert bed.storage.volumes(UID) == []
    stored = bed.kube.get(Server, "web", "ns")
    assert stored is not None and constants.FINALIZER_DOMAIN not in stored.metadata.finalizers


# ----------------------------------------------------------------------------- migrations


def _smig(phase: str, **status: Any) -> ServerMigration:
    return ServerMigration.parse(
        {
            "metadata": {"name": "move", "namespace": "ns", "uid": "m-1", "resourceVersion": "5"},
            "spec": {"serverRef": "web"},
            "status": {
                "phase": phase,
                "serverUID": UID,
                "sourceNode": "host-a",
                "targetNode": "host-b",
                "live": True,
                **status,
            },
        }
    )


def _source(bed: Bed, moves: FakeMigrations) -> tuple[migration_source.Source, list[float]]:
    again: list[float] = []
    bed.kube.put(
        Hypervisor.parse(
            {
                "metadata": {"name": "host-b"},
                "status": {"migration": {"libvirtURI": "qemu+tcp://b/system", "address": "b"}},
            }
        )
    )
    source = migration_source.Source(
        bed.deps,
        bed.kube,  # type: ignore[arg-type]
        moves,
        migration_status.Reports(bed.kube),
        lambda uid: None,
        lambda smig, delay: again.append(delay),
    )
    return source, again


def _reported(bed: Bed) -> dict[str, Any]:
    return bed.kube.writes[-1].status["source"]  # type: ignore[no-any-return]


def test_a_restarted_source_finds_its_migration_still_running(bed: Bed) -> None:
    bed.reconcile()
    moves = FakeMigrations(running_job=JobStats(data_total=10))
    source, again = _source(bed, moves)
    source.reconcile(_smig("Running", source={"started": True}))
    assert again == [1.0] and not bed.kube.writes[1:], "libvirt still moves it: look again soon"


def test_a_restarted_source_finds_the_guest_arrived_on_the_target(bed: Bed) -> None:
    bed.reconcile()
    moves = FakeMigrations(away={UID}, peer={("qemu+tcp://b/system", UID): True})
    source, _ = _source(bed, moves)
    source.reconcile(_smig("Running", source={"started": True}))
    report = _reported(bed)
    assert report["result"] == "Succeeded" and "while the agent was restarting" in report["message"]
    assert UID not in bed.guests.domains, "the source's definition is gone"


def test_a_restarted_source_with_the_guest_still_here_fails_the_migration(bed: Bed) -> None:
    bed.reconcile()
    source, _ = _source(bed, FakeMigrations())
    source.reconcile(_smig("Running", source={"started": True}))
    report = _reported(bed)
    assert report["result"] == "Failed" and report["reason"] == "AgentRestarted"
    assert "keeps running on host-a" in report["message"]
    assert bed.guests.domains[UID].state is State.running


def test_a_cancelled_migration_says_cancelled(bed: Bed) -> None:
    bed.reconcile()
    source, _ = _source(bed, FakeMigrations())
    smig = _smig("Running", source={"started": True})
    smig.metadata.deletionTimestamp = common.now()
    source.reconcile(smig)
    assert _reported(bed)["reason"] == "Cancelled"


def test_the_source_reports_cpu_and_probe_before_anything_moves(bed: Bed) -> None:
    bed.reconcile()
    source, _ = _source(bed, FakeMigrations())
    source.reconcile(_smig("PreChecking"))
    report = _reported(bed)
    assert report["guestCPU"].startswith("<cpu") and report["storageProbe"]
    assert not report.get("started")


def _target(bed: Bed, moves: FakeMigrations) -> migration_target.Target:
    return migration_target.Target(
        bed.deps,
        bed.kube,  # type: ignore[arg-type]
        moves,
        migration_status.Reports(bed.kube),
    )


def _target_report(bed: Bed) -> dict[str, Any]:
    return bed.kube.writes[-1].status["target"]  # type: ignore[no-any-return]


SOURCE_REPORT = {"storageProbe": "p:tok", "guestCPU": "<cpu/>", "arch": "x86_64"}


def test_the_target_checks_then_prepares_then_cleans_up_after_a_failure(bed: Bed) -> None:
    bed.reconcile()  # a guest of that UID is here (what a migration would have brought)
    elsewhere = bed.server().model_dump(mode="json")
    elsewhere["status"]["nodeName"] = "host-z"  # and the Server is not bound here
    bed.kube.put(Server.parse(elsewhere))
    target = _target(bed, FakeMigrations(cpu_ok=True))
    probe = pathlib.Path(bed.settings.instances_dir) / "p"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("tok")  # the source's probe is seen: the folder is shared
    target.reconcile(("ns", "move"), _smig("PreChecking", source=SOURCE_REPORT))
    report = _target_report(bed)
    assert report["sharedStorage"] is True and report["prepared"] is True
    prepared = _smig("Failed", target=report)
    assert prepared.status.target is not None
    assert prepared.status.target.step is TargetStep.Prepared
    target.reconcile(("ns", "move"), prepared)
    assert _target_report(bed)["cleanedUp"] is True
    assert UID not in bed.guests.domains, "what the failed migration left is gone"


def test_the_target_refuses_a_cpu_it_cannot_run(bed: Bed) -> None:
    bed.reconcile()
    target = _target(bed, FakeMigrations(cpu_ok=False))
    target.reconcile(("ns", "move"), _smig("PreChecking", source=SOURCE_REPORT))
    report = _target_report(bed)
    assert report["reason"] == "CPUIncompatible" and report["compatible"] is False
    assert not report.get("prepared")


class ListedWatches:
    """The agent's ServerMigration caches, holding what a test lists: those that name this
    host as their source, and those that name it as their target."""

    def __init__(self, source: list[ServerMigration], target: list[ServerMigration]) -> None:
        self.lists = {constants.SOURCE_FIELD: source, constants.TARGET_FIELD: target}

    def hosted(self, kind: Any, host_name: str, on_change: Any, field: str) -> Any:
        listed = self.lists[field]

        class Cache:
            synced = None

            def items(self) -> list[ServerMigration]:
                return listed

        return Cache()

    def every(self, kind: Any, on_change: Any) -> Any:
        raise AssertionError("not used")


T_MOVED = dt.datetime(2026, 12, 3, 18, 25, 5, tzinfo=dt.UTC)


def _moved(name: str, source: str, target: str, started: dt.datetime) -> ServerMigration:
    """A cold move of the Server that Succeeded (the controller has rebound it)."""
    smig = _smig("Succeeded", live=False, sourceNode=source, targetNode=target,
                 startedAt=started.isoformat(), completedAt=started.isoformat())  # fmt: skip
    smig.metadata.name = name
    return smig


def _bound_here(bed: Bed, scheduled_at: dt.datetime) -> Server:
    """The Server bound to this host, its Scheduled condition True since ``scheduled_at``, and
    no guest here (it left)."""
    body = bed.server().model_dump(mode="json")
    body["status"]["conditions"] = [
        {"type": "Scheduled", "status": "True", "reason": "Bound", "message": "",
         "lastTransitionTime": scheduled_at.isoformat()}
    ]  # fmt: skip
    server = Server.parse(body)
    bed.kube.put(server)
    return server


def _agent_with(bed: Bed, source: list[ServerMigration], target: list[ServerMigration]) -> None:
    agent = migrations.MigrationAgent(
        bed.deps,
        bed.kube,  # type: ignore[arg-type]
        FakeMigrations(),
        lambda uid: None,
        ListedWatches(source, target),  # type: ignore[arg-type]
    )
    bed.deps.hold, bed.deps.moved_away = agent.holds, agent.moved_away


def _deleted(server: Server) -> Server:
    meta = server.metadata.model_copy(update={"deletionTimestamp": common.now()})
    return server.model_copy(update={"metadata": meta})


def test_a_server_moved_away_and_back_cold_is_built_here_and_can_be_deleted(bed: Bed) -> None:
    """Moved to host-c and back (a cold move, a resize that picked this host): the old move
    away holds it no more. Held, it was never built here and its deletion hung."""
    away = _moved("away", "host-a", "host-c", T_MOVED)
    back = _moved("back", "host-c", "host-a", T_MOVED + dt.timedelta(seconds=10))
    _agent_with(bed, [away], [back])
    server = _bound_here(bed, T_MOVED - dt.timedelta(minutes=1))
    reconcile.reconcile_server(bed.deps, server)
    assert UID in bed.guests.domains, "the Server that came back is built here"
    built = bed.kube.get(Server, "web", "ns")
    assert built is not None and constants.FINALIZER_DOMAIN in built.metadata.finalizers
    reconcile.reconcile_server(bed.deps, _deleted(built))
    assert UID not in bed.guests.domains
    stored = bed.kube.get(Server, "web", "ns")
    assert stored is not None and constants.FINALIZER_DOMAIN not in stored.metadata.finalizers


def test_a_server_evacuated_back_here_after_moving_away_is_built(bed: Bed) -> None:
    """Moved to host-c, which then died: bound here again by the evacuation (Scheduled turned
    True after the move ended), so the move away holds it no more."""
    _agent_with(bed, [_moved("away", "host-a", "host-c", T_MOVED)], [])
    server = _bound_here(bed, T_MOVED + dt.timedelta(seconds=40))
    reconcile.reconcile_server(bed.deps, server)
    assert UID in bed.guests.domains


def test_a_copy_from_before_the_move_away_is_still_held(bed: Bed) -> None:
    """The copy of the Server from before the controller rebound it (bound here, the guest
    gone) is still left alone: acting on it would start a second guest on disks that may be
    shared, and deleting it is the target's job."""
    _agent_with(bed, [_moved("away", "host-a", "host-c", T_MOVED)], [])
    server = _bound_here(bed, T_MOVED - dt.timedelta(minutes=1))
    reconcile.reconcile_server(bed.deps, server)
    assert UID not in bed.guests.domains and not bed.kube.writes
    reconcile.reconcile_server(bed.deps, _deleted(server))
    stored = bed.kube.get(Server, "web", "ns")
    assert stored is not None and stored.metadata.deletionTimestamp is None, "left as it was"


def test_a_console_request_is_answered_in_this_hosts_own_configmap(tmp_path: pathlib.Path) -> None:
    """One ConfigMap per host (the admission policies let an agent write only its own): the
    host a Server moved to never has to overwrite the previous host's answer."""
    bed = Bed(tmp_path)
    server = bed.server()
    console = pathlib.Path(reconcile.console_path(bed.settings, UID))
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text("login: ")
    asked = server.model_copy(deep=True)
    asked.metadata.annotations[reconcile.CONSOLE_REQUEST] = "nonce-1"
    reconcile.serve_console(bed.deps, asked)
    assert bed.kube.configmaps == {("ns", "web-console-host-a"): {"console": "login: "}}
    reconcile.serve_console(bed.deps, asked)  # answered already: no second write
    assert len(bed.kube.configmaps) == 1


def test_hypervisor_status_writes_are_paced_in_a_burst_and_prompt_after_quiet() -> None:
    """A host taking a guest every second writes its status after 2, 2, 4, 8, 10, 10 ... s
    (not once per guest); the first change after two quiet beats is published within 2 s."""
    pacer = capacity.Pacer(2.0, 10.0)
    now, gaps = 0.0, []
    assert pacer.delay(now) == 2.0
    for _ in range(7):  # a change is always waiting: each write comes after the delay
        now += pacer.delay(now)
        pacer.wrote(now)
        gaps.append(pacer.delay(now))
    assert gaps == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert pacer.delay(now + 19.9) == 10.0  # still within the burst
    assert pacer.delay(now + 20.0) == 2.0  # two quiet beats: prompt again
    pacer.wrote(now + 30.0)
    assert pacer.delay(now + 30.0) == 2.0
    # A beat shorter than the first wait (the test beds' 2 s) caps it.
    assert capacity.Pacer(2.0, 1.0).delay(0.0) == 1.0
