"""Disk images with their own boot loader boot on real libvirtd + QEMU: the test guest as a
BIOS (SYSLINUX) and a UEFI (OVMF + GRUB) disk, each booted once and taken through stop/start,
suspend/resume, reboot, rescue, a live migration to the other host, a rebuild from the other
image and deletion (one pair of Servers for all of it: each boot costs seconds). The guest
itself says what it sees: its marker, what its disks start with, their sizes."""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from typing import Any

import pytest
import yaml

from kubenova_devenv import guestimage, stack
from tests.conftest import condition, eventually
from tests.e2e import helpers

pytestmark = pytest.mark.timeout(600)

GIB = 1 << 30
MARK = guestimage.MARKER


class Booted:
    """One Server booted from a disk image: where it runs and what its console says."""

    def __init__(self, bed: stack.Stack, namespace: str, name: str) -> None:
        srv = bed.get("server", name, namespace)
        assert srv is not None
        self.bed, self.namespace, self.name = bed, namespace, name
        self.uid: str = srv["metadata"]["uid"]
        self.flavor: str = srv["spec"]["flavorRef"]
        self.moved()

    def moved(self) -> None:
        """Where it runs now (after a migration)."""
        self.host_name: str = self.server()["status"]["nodeName"]
        self.host = self.bed.hosts[self.host_name]

    def server(self) -> dict[str, Any]:
        srv = self.bed.get("server", self.name, self.namespace)
        assert srv is not None
        return srv

    def console(self) -> str:
        return self.bed.console(self.host_name, self.uid)

    def phase(self, phase: str, timeout: float = 120) -> None:
        eventually(
            lambda: self.server().get("status", {}).get("phase") == phase,
            timeout,
            what=f"{self.name} {phase}",
        )

    def booted(self, times: int, timeout: float = 120, last_disk: str = "/dev/vda") -> str:
        """The console once the guest has booted ``times`` times and listed its disks, up to
        ``last_disk`` (the guest prints them one after another: a console read between two of
        them has only the first)."""

        def done() -> str | None:
            text = self.console()
            last = text[text.rfind(guestimage.MARKER) :]
            ok = helpers.boots(text) == times and f"disk-size {last_disk}" in last
            return text if ok else None

        return eventually(done, timeout, what=f"{self.name}: boot {times}")  # type: ignore[no-any-return]

    @property
    def nvram_path(self) -> pathlib.PurePath:
        """Its UEFI variable store, as its host sees it."""
        return pathlib.PurePath(f"/var/lib/kubenova/instances/{self.uid}-nvram.fd")

    def nvram(self) -> pathlib.Path:
        return self.host.outside(str(self.nvram_path))


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bios_and_uefi_disk_images_boot_rescue_move_rebuild_and_go(
    bed: stack.Stack, namespace: str, request: pytest.FixtureRequest
) -> None:
    images = [
        bed.boot_disk_manifest("bios", hw_rng_model="virtio"),
        bed.boot_disk_manifest("uefi", hw_machine_type="q35", os_secure_boot="disabled"),
    ]
    helpers.apply(bed, yaml.safe_dump_all(images))
    # Nova grows the root disk to the flavor's size; diskGiB 0 keeps the image's own size.
    # 256 MiB: the BIOS Server is rebuilt from the UEFI image at the end (GRUB needs them).
    helpers.apply(bed, helpers.flavor("disk.grown", memory=256, disk=2))
    helpers.apply(bed, helpers.flavor("disk.as-image", memory=256, disk=0))
    started = time.monotonic()
    helpers.apply(
        bed,
        helpers.server("bios", namespace, flavor="disk.grown", image="kubenova-guest-bios")
        + "---\n"
        + helpers.server("uefi", namespace, flavor="disk.as-image", image="kubenova-guest-uefi"),
    )
    helpers.wait_ready(bed, namespace, "bios")
    helpers.wait_ready(bed, namespace, "uefi")
    bios, uefi = Booted(bed, namespace, "bios"), Booted(bed, namespace, "uefi")
    bios_console = bios.booted(1)
    uefi_console = uefi.booted(1)
    print(f"apply -> both markers in {time.monotonic() - started:.1f}s")

    # Each booted through its own firmware and boot loader, from its own disk.
    bios_xml, uefi_xml = bios.host.virsh("dumpxml", bios.uid), uefi.host.virsh("dumpxml", uefi.uid)
    assert "<kernel>" not in bios_xml and "<kernel>" not in uefi_xml
    assert "firmware='efi'" not in bios_xml and "<rng model='virtio'>" in bios_xml
    assert "OVMF" in uefi_xml and "machine='pc-q35" in uefi_xml
    assert f"disk-size /dev/vda: {2 * GIB}" in bios_console  # grown to the flavor
    image_bytes = 48 << 20
    assert f"disk-size /dev/vda: {image_bytes}" in uefi_console  # the image's own size

    # The UEFI variable store is the Server's: made from the template on first boot.
    nvram = uefi.nvram()
    assert f"/var/lib/kubenova/instances/{uefi.uid}-nvram.fd</nvram>" in uefi_xml
    template = pathlib.Path(uefi_xml.split("<nvram template='")[1].split("'")[0])
    assert nvram.exists()
    inode = nvram.stat().st_ino

    # Stop and start both: the UEFI guest keeps its variable store.
    for g in (bios, uefi):
        helpers.patch(bed, namespace, g.name, {"powerState": "Stopped"})
    for g in (bios, uefi):
        g.phase("SHUTOFF")
    assert nvram.exists() and nvram.stat().st_ino == inode
    # OVMF wrote its variables (boot options) on the first boot: no longer the template.
    assert _sha(nvram) != _sha(template)
    for g in (bios, uefi):
        helpers.patch(bed, namespace, g.name, {"powerState": "Running"})
    for g in (bios, uefi):
        g.booted(2)
    assert nvram.stat().st_ino == inode

    # Suspend (managed save) and resume the UEFI guest: it runs on, no new boot.
    this_boot = eventually(
        lambda: "kubenova-uptime" in (t := (c := uefi.console())[c.rfind(MARK) :]) and t,
        60,
        what="the uptime counter of boot 2",
    )
    uptime = helpers.last_uptime(this_boot)
    helpers.patch(bed, namespace, "uefi", {"powerState": "Suspended"})
    uefi.phase("SUSPENDED")
    helpers.patch(bed, namespace, "uefi", {"powerState": "Running"})
    uefi.phase("ACTIVE")
    eventually(
        lambda: helpers.last_uptime(uefi.console()) > uptime + 1, 60, what="the uptime going on"
    )
    assert helpers.boots(uefi.console()) == 2

    # A hard reboot of each: a third boot, the same variable store.
    for g in (bios, uefi):
        helpers.patch(
            bed,
            namespace,
            g.name,
            {"rebootRequestedAt": "2026-11-29T22:00:00Z", "rebootType": "Hard"},
        )
    for g in (bios, uefi):
        console = g.booted(3)
        g.phase("ACTIVE")
    assert f"disk-size /dev/vda: {image_bytes}" in console
    assert nvram.stat().st_ino == inode and _sha(nvram) != _sha(template)

    # What each guest reads at the start of its own disk (SYSLINUX's MBR; GPT's empty one).
    own = {g.name: _disk_line(_this_boot(g.console()), "/dev/vda") for g in (bios, uefi)}
    assert own["bios"] != own["uefi"] and own["uefi"] == ""

    # Rescue: each boots a rescue image with its own disk attached second. The UEFI Server is
    # rescued with the BIOS image (SeaBIOS: its variable store is left alone meanwhile), the
    # BIOS Server with the UEC test image.
    kept = _sha(nvram)
    helpers.patch(bed, namespace, "uefi", {"rescue": {"imageRef": "kubenova-guest-bios"}})
    helpers.patch(bed, namespace, "bios", {"rescue": {"imageRef": "kubenova-guest"}})
    for g in (bios, uefi):
        g.phase("RESCUE")
    rescued = {g.name: _this_boot(g.booted(4, last_disk="/dev/vdb")) for g in (bios, uefi)}
    assert _disk_line(rescued["uefi"], "/dev/vda") == own["bios"]  # booted the BIOS image
    assert _disk_line(rescued["uefi"], "/dev/vdb") == own["uefi"]  # its own disk, second
    assert f"disk-size /dev/vdb: {image_bytes}" in rescued["uefi"]
    assert _disk_line(rescued["bios"], "/dev/vda") == guestimage.DISK_MARKER
    assert _disk_line(rescued["bios"], "/dev/vdb") == own["bios"]
    assert f"disk-size /dev/vdb: {2 * GIB}" in rescued["bios"]
    assert "firmware='efi'" not in uefi.host.virsh("dumpxml", uefi.uid)
    assert nvram.stat().st_ino == inode and _sha(nvram) == kept

    # Unrescue: each boots its own disk again, through its own firmware; the UEFI one with the
    # variable store it had.
    for g in (bios, uefi):
        bed.kubectl(
            "patch", "server", g.name, "-n", namespace, "--type", "json",
            "-p", '[{"op": "remove", "path": "/spec/rescue"}]',
        )  # fmt: skip
    for g in (bios, uefi):
        back = _this_boot(g.booted(5))
        g.phase("ACTIVE")
        assert _disk_line(back, "/dev/vda") == own[g.name]
        assert "rescue" not in " ".join(v for _, v in helpers.volumes_for(bed, g.uid))
    assert "OVMF" in uefi.host.virsh("dumpxml", uefi.uid)
    assert nvram.stat().st_ino == inode

    # Live migration of both to the other host (no shared storage: a block migration). The
    # guests run on without a boot; the UEFI variable store goes with its Server: on the target
    # as it was, gone from the source.
    uptimes = {g.name: _uptime_started(g) for g in (bios, uefi)}
    kept = _sha(nvram)
    sources = {g.name: g.host_name for g in (bios, uefi)}
    for g in (bios, uefi):
        helpers.migrate(bed, namespace, f"move-{g.name}", g.name, targetNode=_other(bed, g))
    for g in (bios, uefi):
        status = helpers.migration_done(bed, namespace, f"move-{g.name}", 300)["status"]
        assert status["phase"] == "Succeeded", status
        assert status["blockMigration"] is True
        g.moved()
        assert g.host_name == status["targetNode"] != sources[g.name]
        g.phase("ACTIVE")
        eventually(
            lambda g=g: helpers.last_uptime(g.console()) > uptimes[g.name] + 1,
            60,
            what=f"{g.name}'s uptime going on on {g.host_name}",
        )
        assert helpers.boots(g.console()) == 0, "booted again on the target"
        assert helpers.domains_for(bed, namespace, g.name) == [(g.host_name, g.uid)]
    moved_nvram = uefi.nvram()
    assert moved_nvram.exists() and _sha(moved_nvram) == kept
    assert not bed.hosts[sources["uefi"]].outside(str(uefi.nvram_path)).exists()
    assert str(uefi.nvram_path) in uefi.host.virsh("dumpxml", uefi.uid)

    # Rebuild each from the other image: same UID, host and flavor; a new root disk and config
    # drive. The UEFI Server becomes BIOS (no variable store any more), the BIOS one UEFI (a
    # new store from the template).
    drive = uefi.host.outside(f"/var/lib/kubenova/instances/{uefi.uid}-config.iso")
    # Held open, the old drive's inode cannot be given to the new file (ext4 reuses a freed
    # inode number at once: comparing numbers alone once passed for a drive never remade).
    old_drive = drive.open("rb")
    request.addfinalizer(old_drive.close)
    swap = {"uefi": "kubenova-guest-bios", "bios": "kubenova-guest-uefi"}
    for g in (bios, uefi):
        helpers.patch(
            bed,
            namespace,
            g.name,
            {"imageRef": swap[g.name], "rebuildRequestedAt": "2026-11-29T22:30:00Z"},
        )
    for g in (bios, uefi):
        console = _this_boot(g.booted(1))
        # What it runs (the agent's imageRef) and the bits it is built from (the controller's
        # pin, used by every later rescue, move or evacuation) both name the new Image.
        rebuilt = eventually(
            lambda g=g: (
                (s := g.server())["status"].get("imageRef") == swap[g.name]
                and s["status"]["image"]["name"] == swap[g.name]
                and s
            ),
            60,
            what=f"status.imageRef and status.image of {g.name} after the rebuild",
        )
        assert rebuilt["metadata"]["uid"] == g.uid
        assert rebuilt["status"]["nodeName"] == g.host_name
        assert rebuilt["status"]["flavor"]["name"] == g.flavor
        size = image_bytes if g is uefi else 2 * GIB
        assert f"disk-size /dev/vda: {size}" in console
    assert "firmware='efi'" not in uefi.host.virsh("dumpxml", uefi.uid)
    old = os.fstat(old_drive.fileno())
    assert not moved_nvram.exists() and old.st_nlink == 0 and drive.stat().st_ino != old.st_ino
    assert "OVMF" in bios.host.virsh("dumpxml", bios.uid) and bios.nvram().exists()

    # Deleting the Servers removes their disks and variable stores, on every host.
    bed.kubectl("delete", "server", "uefi", "bios", "-n", namespace, "--timeout=120s")
    for g in (bios, uefi):
        assert helpers.volumes_for(bed, g.uid) == []
        for host in bed.hosts.values():
            assert not host.outside(str(g.nvram_path)).exists()


def _this_boot(console: str) -> str:
    """The console since the guest's last boot."""
    return console[console.rfind(MARK) :]


def _disk_line(console: str, device: str) -> str:
    """What the guest read at the start of ``device`` (its last ``disk`` line of it)."""
    prefix = f"disk {device}: "
    lines = [ln for ln in console.splitlines() if ln.startswith(prefix)]
    assert lines, f"no {prefix!r} line in {console[-2000:]}"
    return lines[-1][len(prefix) :].strip()


def _uptime_started(g: Booted) -> float:
    """The guest's uptime, once this boot's counter has started."""
    eventually(lambda: "kubenova-uptime" in _this_boot(g.console()), 60, what=f"{g.name} counting")
    return helpers.last_uptime(g.console())


def _other(bed: stack.Stack, g: Booted) -> str:
    return next(name for name in bed.hosts if name != g.host_name)


def test_a_disk_without_a_boot_loader_is_not_ready_with_the_reason(
    bed: stack.Stack, namespace: str
) -> None:
    """The BIOS finds nothing to boot: the Server says so, instead of a silent ACTIVE."""
    disk, sha = bed.disk_variant(f"noboot-{namespace[-6:]}")
    assert bed.image_server is not None
    image = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": f"noboot-{namespace}"},
        "spec": {
            "source": {"disk": {"url": bed.image_server.url(disk), "sha256": sha}},
            "properties": {"hw_firmware_type": "bios"},
        },
    }
    helpers.apply(bed, yaml.safe_dump(image))
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server("blank", namespace, image=f"noboot-{namespace}"))
    ready = eventually(
        lambda: (
            (c := condition(bed.get("server", "blank", namespace), "Ready")).get("reason")
            == "BootFailed"
            and c
        ),
        90,
        what="Ready=False BootFailed",
    )
    assert ready["status"] == "False"
    assert "did not boot" in ready["message"] and "BIOS" in ready["message"], ready
    events = bed.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=BootFailed", "-o", "name"
    ).stdout
    assert events.strip(), "a BootFailed event"
