"""The test guest as disk images with their own boot loader, as users' cloud images are.

* ``bios.qcow2``: an MBR disk with one bootable FAT partition holding the guest's kernel and
  initramfs and SYSLINUX (SeaBIOS boots it);
* ``uefi.qcow2``: a GPT disk with one EFI system partition holding the same files and a
  standalone GRUB as ``/EFI/BOOT/BOOTX64.EFI`` (OVMF boots it; unsigned, so secure boot off).

Both are built as plain files from Debian packages (syslinux, mtools, dosfstools, fdisk,
grub-efi-amd64-bin): no mounts, no loop devices, no root needed beyond writing files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

from kubenova_devenv import guestimage

IMAGE_MIB = 48
PART_START = 2048  # sectors: the partition starts at 1 MiB
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MBR_BIN = "/usr/lib/syslinux/mbr/mbr.bin"

SYSLINUX_CFG = """SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0
"""

# GRUB boots from the partition it was loaded from ($cmdpath): with several disks holding the
# same files (rescue) a search would take the first one it finds.
GRUB_CFG = """set timeout=0
if regexp --set=1:bootdev '^\\(([^)]*)\\)' "$cmdpath"; then
    set root="$bootdev"
else
    search --no-floppy --file --set=root /vmlinuz
fi
linux /vmlinuz console=ttyS0
initrd /initrd.img
boot
"""

GRUB_MODULES = "part_gpt part_msdos fat search search_fs_file linux normal configfile echo regexp"


@dataclasses.dataclass(frozen=True)
class BootDisks:
    bios: pathlib.Path
    uefi: pathlib.Path


def version(guest_dir: pathlib.Path) -> str:
    """A key of what goes into the disks (besides the guest itself, keyed by its folder)."""
    what = SYSLINUX_CFG + GRUB_CFG + GRUB_MODULES + str(IMAGE_MIB) + guest_dir.name
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def build(guest: guestimage.GuestImage, out: pathlib.Path) -> BootDisks:
    """Build (or reuse) both disks under ``out``; idempotent and atomic per file."""
    out.mkdir(parents=True, exist_ok=True)
    disks = BootDisks(out / "bios.qcow2", out / "uefi.qcow2")
    if disks.bios.exists() and disks.uefi.exists():
        return disks
    with tempfile.TemporaryDirectory(dir=out) as tmp_name:
        tmp = pathlib.Path(tmp_name)
        for name in ("vmlinuz", "initrd.img"):
            shutil.copyfile(guest.kernel if name == "vmlinuz" else guest.ramdisk, tmp / name)
        _build_bios(tmp, tmp / "bios.raw")
        _build_uefi(tmp, tmp / "uefi.raw")
        for name in ("bios", "uefi"):
            _qcow2(tmp / f"{name}.raw", tmp / f"{name}.qcow2")
            os.replace(tmp / f"{name}.qcow2", out / f"{name}.qcow2")
    return disks


def _run(*args: str, stdin: str | None = None, cwd: pathlib.Path | None = None) -> None:
    try:
        subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, cwd=cwd)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{' '.join(args)} failed: {exc.stderr.strip()}") from exc


def _tool(name: str) -> str:
    """A tool of the packages hack/setup.sh installs (some live in /sbin, off a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} is missing: run `make setup` (hack/setup.sh) first")
    return found


def _fat_partition(disk: pathlib.Path, table: str, fat_bits: str, label: str) -> str:
    """A blank disk with one partition from 1 MiB to the end, formatted FAT; returns the
    mtools image spec (``file@@offset``) of that filesystem."""
    with disk.open("wb") as f:
        f.truncate(IMAGE_MIB << 20)
    _run(_tool("sfdisk"), "--no-reread", "--no-tell-kernel", "-q", str(disk), stdin=table)
    end_reserve = 34 if "gpt" in table else 0  # the backup GPT at the end of the disk
    sectors = (IMAGE_MIB << 20) // SECTOR - PART_START - end_reserve
    extra = ["-s", "1"] if fat_bits == "32" else []
    _run(
        _tool("mkfs.fat"),
        "-F",
        fat_bits,
        *extra,
        "-n",
        label,
        "--offset",
        str(PART_START),
        "-h",
        str(PART_START),
        str(disk),
        str(sectors * SECTOR // 1024),  # mkfs.fat counts 1 KiB blocks
    )
    return f"{disk}@@{PART_START * SECTOR}"


def _build_bios(files: pathlib.Path, disk: pathlib.Path) -> None:
    table = f"label: dos\nstart={PART_START}, type=e, bootable\n"
    fs = _fat_partition(disk, table, "16", "KNBIOS")
    (files / "syslinux.cfg").write_text(SYSLINUX_CFG)
    _run(_tool("mcopy"), "-i", fs, "vmlinuz", "initrd.img", "syslinux.cfg", "::/", cwd=files)
    _run(_tool("syslinux"), "--install", "--offset", str(PART_START * SECTOR), str(disk))
    with disk.open("r+b") as f, open(MBR_BIN, "rb") as mbr:
        f.write(mbr.read(440))


def _build_uefi(files: pathlib.Path, disk: pathlib.Path) -> None:
    table = f"label: gpt\nstart={PART_START}, type={ESP_TYPE}\n"
    fs = _fat_partition(disk, table, "32", "KNUEFI")
    (files / "grub.cfg").write_text(GRUB_CFG)
    _run(
        _tool("grub-mkstandalone"),
        "-O",
        "x86_64-efi",
        "-o",
        str(files / "BOOTX64.EFI"),
        f"--modules={GRUB_MODULES}",
        "--locales=",
        "--fonts=",
        "--themes=",
        f"boot/grub/grub.cfg={files / 'grub.cfg'}",
    )
    _run(_tool("mmd"), "-i", fs, "::/EFI", "::/EFI/BOOT")
    _run(_tool("mcopy"), "-i", fs, "BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI", cwd=files)
    _run(_tool("mcopy"), "-i", fs, "vmlinuz", "initrd.img", "::/", cwd=files)


def _qcow2(raw: pathlib.Path, target: pathlib.Path) -> None:
    _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target))
    raw.unlink()


def build_cached(guest: guestimage.GuestImage | None = None) -> BootDisks:
    """Both disks in the kubenova cache, next to the guest they boot, built on first use."""
    guest = guest or guestimage.build_cached()
    guest_dir = guest.kernel.parent
    return build(guest, guest_dir / f"boot-{version(guest_dir)}")


if __name__ == "__main__":
    print(build_cached())
