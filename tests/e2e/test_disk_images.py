"""Disk images with their own boot loader boot on real libvirtd + QEMU: the test guest as a
BIOS (SYSLINUX) and a UEFI (OVMF + GRUB) disk, each booted once and taken through stop/start,
reboot and deletion. The guest itself says what it sees: its marker, its disk's size."""

from __future__ import annotations

import hashlib
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
        self.host_name: str = srv["status"]["nodeName"]
        self.host = bed.hosts[self.host_name]

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

    def booted(self, times: int, timeout: float = 120) -> str:
        """The console once the guest has booted ``times`` times and listed its disks."""

        def done() -> str | None:
            text = self.console()
            last = text[text.rfind(guestimage.MARKER) :]
            ok = helpers.boots(text) == times and "disk-size /dev/vda" in last
            return text if ok else None

        return eventually(done, timeout, what=f"{self.name}: boot {times}")  # type: ignore[no-any-return]

    def nvram(self) -> pathlib.Path:
        return self.host.outside(f"/var/lib/kubenova/instances/{self.uid}-nvram.fd")


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bios_and_uefi_disk_images_boot_grow_stop_start_reboot_and_go(
    bed: stack.Stack, namespace: str
) -> None:
    images = [
        bed.boot_disk_manifest("bios", hw_rng_model="virtio"),
        bed.boot_disk_manifest("uefi", hw_machine_type="q35", os_secure_boot="disabled"),
    ]
    helpers.apply(bed, yaml.safe_dump_all(images))
    # Nova grows the root disk to the flavor's size; diskGiB 0 keeps the image's own size.
    helpers.apply(bed, helpers.flavor("disk.grown", memory=128, disk=2))
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

    # Rebuild the UEFI Server from the BIOS image: same UID, host and flavor; a new root disk
    # and config drive; no variable store any more (BIOS).
    drive = uefi.host.outside(f"/var/lib/kubenova/instances/{uefi.uid}-config.iso")
    drive_inode = drive.stat().st_ino
    helpers.patch(
        bed,
        namespace,
        "uefi",
        {"imageRef": "kubenova-guest-bios", "rebuildRequestedAt": "2026-11-29T22:30:00Z"},
    )
    console = uefi.booted(4)
    rebuilt = eventually(
        lambda: (s := uefi.server())["status"].get("imageRef") == "kubenova-guest-bios" and s,
        60,
        what="status.imageRef after the rebuild",
    )
    assert rebuilt["metadata"]["uid"] == uefi.uid
    assert rebuilt["status"]["nodeName"] == uefi.host_name
    assert rebuilt["status"]["flavor"]["name"] == "disk.as-image"
    assert f"disk-size /dev/vda: {image_bytes}" in console[console.rfind(guestimage.MARKER) :]
    assert "firmware='efi'" not in uefi.host.virsh("dumpxml", uefi.uid)
    assert not nvram.exists() and drive.stat().st_ino != drive_inode

    # Deleting the Servers removes their disks (and a variable store) with them.
    bed.kubectl("delete", "server", "uefi", "bios", "-n", namespace, "--timeout=120s")
    assert helpers.volumes_for(bed, uefi.uid) == [] and helpers.volumes_for(bed, bios.uid) == []


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
