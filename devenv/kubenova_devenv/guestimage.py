"""A tiny guest made at test time from Debian packages (nothing else is downloaded).

* kernel: ``vmlinuz`` of Debian's cloud kernel package (``apt-get download``, ``dpkg-deb -x``);
* ramdisk: a busybox initramfs whose ``/init`` loads the virtio, ISO 9660 and ACPI button
  modules, prints :data:`MARKER` on the serial console, reports what it finds on each virtio
  disk (its first bytes and its size in bytes, as the guest sees it),
  handles the ACPI power button, then prints an uptime counter every second;
* disk: a small qcow2 whose first bytes hold :data:`DISK_MARKER`, to prove the disk path.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

MARKER = "KUBENOVA-GUEST-UP"
DISK_MARKER = "KUBENOVA-DISK-MARKER-7f3a"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
#: Loaded in this order: each after the modules it depends on (``depends=`` in its modinfo).
MODULES = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/cdrom/cdrom.ko",
    "kernel/fs/isofs/isofs.ko",
    "kernel/drivers/acpi/button.ko",
    "kernel/drivers/input/evdev.ko",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /lib/modules/$m.ko || echo "kubenova-guest: insmod $m failed"; done
echo "{marker} kernel=$(uname -r)"
sleep 1
for d in /dev/vd?; do
    [ -b "$d" ] || continue
    echo "disk $d: $(head -c 64 "$d" | tr -cd 'A-Za-z0-9-' | head -c 40)"
    echo "disk-size $d: $(( $(cat /sys/block/${d#/dev/}/size) * 512 ))"
done
# The config drive (label config-2): inject its files, run its user data if it is a script.
for d in /dev/vd?; do
    mount -t iso9660 -o ro "$d" /mnt 2>/dev/null || continue
    md=/mnt/openstack/latest/meta_data.json
    if [ -f "$md" ]; then
        echo "config drive $d: $(tr -d '\n' < "$md" | head -c 120)"
        grep -o '"path": "[^"]*", "content_path": "[^"]*"' "$md" | while read -r entry; do
            p=$(echo "$entry" | sed 's/^"path": "\([^"]*\)".*/\1/')
            c=$(echo "$entry" | sed 's/.*"content_path": "\([^"]*\)"$/\1/')
            mkdir -p "$(dirname "$p")"
            cp "/mnt/openstack$c" "$p"
            echo "kubenova-file $p: $(cat "$p")"
        done
        if [ "$(head -c 2 /mnt/openstack/latest/user_data 2>/dev/null)" = "#!" ]; then
            cp /mnt/openstack/latest/user_data /tmp/user-data
            chmod +x /tmp/user-data
            echo "kubenova-guest: running user data"
            /tmp/user-data > /dev/console 2>&1 &
        fi
        break
    fi
    umount /mnt
done
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\necho kubenova-guest: power button, shutting down\npoweroff -f\n' \
    > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
mkdir -p /var/run /var/log
acpid -f -c /etc/acpi -l /var/log/acpid.log &
while true; do
    echo "kubenova-uptime $(cut -d' ' -f1 /proc/uptime)"
    sleep 1
done
"""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """Files of the test guest and their SHA-256 checksums."""

    kernel: pathlib.Path
    ramdisk: pathlib.Path
    disk: pathlib.Path

    def sha256(self, path: pathlib.Path) -> str:
        return sha256_of(path)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version() -> str:
    """A key of what goes into the guest: a change of the init script makes a new build."""
    digest = hashlib.sha256((INIT + MARKER + DISK_MARKER + "".join(MODULES)).encode())
    return digest.hexdigest()[:12]


def build(out: pathlib.Path) -> GuestImage:
    """Build (or reuse) the guest under ``out``; idempotent and atomic per file."""
    out.mkdir(parents=True, exist_ok=True)
    image = GuestImage(out / "vmlinuz", out / "initrd.img", out / "disk.qcow2")
    if image.kernel.exists() and image.ramdisk.exists() and image.disk.exists():
        return image
    with tempfile.TemporaryDirectory(dir=out) as tmp_name:
        tmp = pathlib.Path(tmp_name)
        tree = _unpack_kernel(tmp)
        vmlinuz = next(iter(sorted(tree.glob("boot/vmlinuz-*"))))
        module_dir = next(iter(sorted(tree.glob("lib/modules/*"))))
        _build_initramfs(tmp / "initrd.img", module_dir)
        _build_disk(tmp / "disk.qcow2")
        shutil.copyfile(vmlinuz, tmp / "vmlinuz")
        for name in ("vmlinuz", "initrd.img", "disk.qcow2"):
            os.replace(tmp / name, out / name)
    return image


def _unpack_kernel(tmp: pathlib.Path) -> pathlib.Path:
    deps = subprocess.run(
        ["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True, check=True
    ).stdout
    names = [ln.split(":", 1)[1].strip() for ln in deps.splitlines() if "Depends:" in ln]
    package = next(n for n in names if n.startswith("linux-image-"))
    subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True, capture_output=True)
    deb = glob.glob(str(tmp / f"{package}_*.deb"))[0]
    tree = tmp / "kernel"
    subprocess.run(["dpkg-deb", "-x", deb, str(tree)], check=True)
    return tree


def _build_initramfs(target: pathlib.Path, module_dir: pathlib.Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = target.parent / "initramfs"
    for sub in ("bin", "lib/modules", "etc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    names = []
    for rel in MODULES:
        src = module_dir / rel
        name = src.name.removesuffix(".ko")
        shutil.copyfile(src, root / "lib" / "modules" / src.name)
        names.append(name)
    init = root / "init"
    init.write_text(INIT.replace("{modules}", " ".join(names)).replace("{marker}", MARKER))
    init.chmod(0o755)
    files = subprocess.run(
        ["find", ".", "-print0"], cwd=root, capture_output=True, check=True
    ).stdout
    with target.open("wb") as f:
        cpio = subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=files,
            capture_output=True,
            check=True,
        )
        f.write(
            subprocess.run(
                ["gzip", "-9n"], input=cpio.stdout, capture_output=True, check=True
            ).stdout
        )


def _build_disk(target: pathlib.Path) -> None:
    raw = target.with_suffix(".raw")
    with raw.open("wb") as f:
        f.write((DISK_MARKER + "\n").encode().ljust(1 << 20, b"\0"))
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target)],
        check=True,
    )
    raw.unlink()


def build_cached() -> GuestImage:
    """The guest in the kubenova cache, built on first use."""
    from kubenova_devenv import paths  # noqa: PLC0415

    return build(paths.cache_dir() / "guest" / version())


if __name__ == "__main__":
    print(build_cached())
