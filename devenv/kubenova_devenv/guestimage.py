"""A tiny guest made at test time from Debian packages (nothing else is downloaded).

* kernel: ``vmlinuz`` of Debian's cloud kernel package (``apt-get download``, ``dpkg-deb -x``);
* ramdisk: a busybox initramfs whose ``/init`` loads the virtio (disk and network), ISO 9660
  and ACPI button modules, prints :data:`MARKER` on the serial console, reports what it finds
  on each virtio disk (its first bytes and its size in bytes, as the guest sees it), reads the
  config drive, configures each NIC from ``network_data.json`` when it has an ``ipv4`` network
  for the NIC's MAC, else by DHCP (busybox udhcpc), printing
  ``kubenova-net <nic> <ip>/<prefix> ... source=config-drive|dhcp uptime=<s>``, serves HTTP on
  port 80 (``kubenova-www <hostname>``), runs its user data if it is a script (say, a ping of a
  peer), handles the ACPI power button, then prints an uptime counter every second;
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
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
)
#: udhcpc's event script: configures the NIC from the lease and says so on the console.
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
deconfig)
    ip link set "$interface" up
    ;;
bound|renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
    fi
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    echo "kubenova-net $interface $ip/${mask:-24} mac=$(cat /sys/class/net/$interface/address)" \
        "gw=$router mtu=$mtu source=dhcp uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
    ;;
esac
"""
#: Reads ``network_data.json`` (after ``tr '{}[],' '\n\n\n\n\n'``: one ``"key": value`` a
#: line) and prints ``type ip netmask gateway mtu`` of the network on the link whose MAC is
#: ``mac``. Networks start at their ``"id": "network<N>"`` (Nova's ids), links carry the MAC.
NETDATA_AWK = r"""
function val(s) { sub(/^[^:]*: */, "", s); gsub(/"/, "", s); gsub(/ /, "", s); return s }
function flush() {
    m = linkmtu[nlink]
    if (nlink != "" && linkmac[nlink] == mac)
        print ntype, nip, nmask, (ngw == "" ? "-" : ngw), (m == "" ? "-" : m)
    nlink = ""; ntype = ""; nip = ""; nmask = ""; ngw = ""
}
/"id":/ {
    id = val($0)
    if (id ~ /^network[0-9]+$/) { flush(); innet = 1 } else { innet = 0; cur = id }
    next
}
/"ethernet_mac_address":/ { linkmac[cur] = tolower(val($0)); next }
/"mtu":/ { if (!innet) linkmtu[cur] = val($0); next }
/"type":/ { if (innet && ntype == "") ntype = val($0); next }
/"link":/ { if (innet) nlink = val($0); next }
/"ip_address":/ { if (innet) nip = val($0); next }
/"netmask":/ { if (innet && nmask == "") nmask = val($0); next }
/"gateway":/ { if (innet && ngw == "") ngw = val($0); next }
END { flush() }
"""

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
# The config drive (label config-2): inject its files, keep its network data and user data.
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
        name=$(grep -o '"hostname": "[^"]*"' "$md" | cut -d'"' -f4)
        [ -n "$name" ] && hostname "$name"
        cp /mnt/openstack/latest/network_data.json /tmp/ 2>/dev/null
        if [ "$(head -c 2 /mnt/openstack/latest/user_data 2>/dev/null)" = "#!" ]; then
            cp /mnt/openstack/latest/user_data /tmp/user-data
            chmod +x /tmp/user-data
        fi
        break
    fi
    umount /mnt
done
# Each NIC: static from network_data.json when it has an ipv4 network for the NIC's MAC, else DHCP.
ip link set lo up
for path in /sys/class/net/*; do
    nic=${path##*/}
    [ "$nic" = lo ] && continue
    mac=$(cat "$path/address")
    set -- $( [ -f /tmp/network_data.json ] && tr '{}[],' '\n\n\n\n\n' < /tmp/network_data.json \
        | awk -v mac="$mac" -f /etc/netdata.awk | head -n 1)
    if [ "$1" = ipv4 ]; then
        eval "$(ipcalc -p "$2" "$3")"
        [ "$5" != - ] && ip link set "$nic" mtu "$5"
        ip link set "$nic" up
        ip addr add "$2/$PREFIX" dev "$nic"
        [ "$4" != - ] && ip route replace default via "$4" dev "$nic"
        echo "kubenova-net $nic $2/$PREFIX mac=$mac gw=$4 mtu=$5 source=config-drive" \
            "uptime=$(cut -d' ' -f1 /proc/uptime)"
    else
        ip link set "$nic" up
        udhcpc -i "$nic" -s /etc/udhcpc.sh -O mtu -t 120 -T 1 -A 1 -b >/dev/null 2>&1
    fi
done
mkdir -p /www
echo "kubenova-www $(hostname)" > /www/index.html
httpd -p 80 -h /www
if [ -x /tmp/user-data ]; then
    echo "kubenova-guest: running user data"
    /tmp/user-data > /dev/console 2>&1 &
fi
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
    digest = hashlib.sha256(
        (INIT + UDHCPC_SCRIPT + NETDATA_AWK + MARKER + DISK_MARKER + "".join(MODULES)).encode()
    )
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
    (root / "etc" / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
    (root / "etc" / "udhcpc.sh").chmod(0o755)
    (root / "etc" / "netdata.awk").write_text(NETDATA_AWK)
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
