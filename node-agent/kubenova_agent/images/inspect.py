"""Inspecting a downloaded file before it is used: is it a safe image of the declared kind?

A disk image is more than bytes to QEMU: a qcow2 header can name a *backing file* or an
*external data file* anywhere on the host, and the guest then reads that file through its disk
(``qemu-img amend -o data_file=/etc/shadow`` is all it takes). Nova and Glance learned this the
hard way (CVE-2022-47951, CVE-2024-32498) and now inspect every image with ``qemu-img info`` and
the declared format forced. So does kubenova, in two steps:

1. Its own reading of the qcow2 header (no tool, nothing opened but the file): a backing file,
   the external-data-file feature or header extension, encryption, or an unknown version is
   refused before ``qemu-img`` sees the file, so an older ``qemu-img`` that would follow the
   data file never gets to. A file declared ``raw`` that starts like another image format
   (qcow2, QED, VMDK, VHDX, VDI, LUKS) is refused too: some tool that probes would read it as
   that format.
2. ``qemu-img info -f <format> --output=json --force-share`` under resource limits (1 GiB of
   address space, 30 s of CPU, as Nova runs it): the format it reports must be the declared one,
   with no backing file, no data file, not corrupt, not encrypted, and a virtual size within the
   agent's limit.

Kernels and ramdisks (UEC) are not disk images: QEMU loads them as plain bytes into guest memory
(``-kernel``/``-initrd``) and no host file is named in them, so what matters is that they are
not absurdly large (``max_boot_file_bytes``) and not empty. What a kernel does runs inside the
guest, which is the tenant's own business.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import pathlib
import struct
import subprocess
from typing import Any

from kubenova_agent.images import errors

QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_KNOWN_INCOMPAT = 0b11111  # dirty, corrupt, external data, compression type, extended L2
_EXT_DATA_FILE = 0x44415441  # "DATA": the external data file's name
_EXT_END = 0
_MAGICS = {  # formats a file declared raw must not look like
    "qcow2": (0, QCOW2_MAGIC),
    "qed": (0, b"QED\x00"),
    "vmdk": (0, b"KDMV"),
    "vmdk descriptor": (0, b"# Disk DescriptorFile"),
    "vhdx": (0, b"vhdxfile"),
    "vdi": (0x40, b"\x7f\x10\xda\xbe"),
    "luks": (0, b"LUKS\xba\xbe"),
}


class Kind(enum.StrEnum):
    """What a downloaded file is declared to be (Glance's ``disk_format``, and UEC parts)."""

    qcow2 = "qcow2"
    raw = "raw"
    kernel = "kernel"
    ramdisk = "ramdisk"

    @property
    def is_disk(self) -> bool:
        return self in (Kind.qcow2, Kind.raw)


@dataclasses.dataclass(frozen=True)
class InspectLimits:
    max_virtual_bytes: int = 4 << 40
    """The largest disk (virtual size) an image may describe."""
    max_boot_file_bytes: int = 512 << 20
    """The largest kernel or ramdisk."""
    qemu_img: str = "qemu-img"
    address_space_bytes: int = 1 << 30
    """``qemu-img``'s address-space limit (a crafted image must not exhaust the host)."""
    cpu_seconds: int = 30
    timeout_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What inspecting a file found; it passed."""

    kind: Kind
    size: int
    """Bytes of the file."""
    virtual_size: int
    """Bytes a guest sees (a disk image); the file's size for kernels and ramdisks."""


def inspect(path: pathlib.Path, kind: Kind, limits: InspectLimits) -> Inspection:
    """Check ``path`` is a safe ``kind``; raises :class:`errors.ImageInvalid` otherwise."""
    size = path.stat().st_size
    if not kind.is_disk:
        if size == 0:
            raise errors.ImageInvalid(f"the {kind.value} is empty")
        if size > limits.max_boot_file_bytes:
            raise errors.ImageInvalid(
                f"the {kind.value} is {size} bytes, more than the "
                f"{limits.max_boot_file_bytes} accepted"
            )
        return Inspection(kind, size, size)
    with path.open("rb") as f:
        head = f.read(65536)
    if kind is Kind.qcow2:
        check_qcow2_header(head, size)
    else:
        for fmt, (offset, magic) in _MAGICS.items():
            if head[offset : offset + len(magic)] == magic:
                raise errors.ImageInvalid(f"declared raw, but the file is a {fmt} image")
    info = qemu_img_info(path, kind, limits)
    virtual = check_info(info, kind, limits)
    return Inspection(kind, size, virtual)


def check_qcow2_header(head: bytes, size: int) -> None:
    """Refuse a qcow2 header that names a host file or that kubenova does not understand."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise errors.ImageInvalid("declared qcow2, but the file is not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    crypt_method = struct.unpack(">I", head[32:36])[0]
    if version not in (2, 3):
        raise errors.ImageInvalid(f"qcow2 version {version} is not supported")
    if backing_offset or backing_size:
        raise errors.ImageInvalid("the qcow2 image names a backing file")
    if crypt_method:
        raise errors.ImageInvalid("the qcow2 image is encrypted")
    header_length = 72
    if version == 3:
        if len(head) < 104:
            raise errors.ImageInvalid("the qcow2 header is truncated")
        (incompatible,) = struct.unpack(">Q", head[72:80])
        (header_length,) = struct.unpack(">I", head[100:104])
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise errors.ImageInvalid("the qcow2 image uses an external data file")
        if incompatible & ~_QCOW2_KNOWN_INCOMPAT:
            raise errors.ImageInvalid(f"the qcow2 image has unknown features {incompatible:#x}")
    offset = header_length
    while offset + 8 <= min(len(head), size):
        ext_type, ext_len = struct.unpack(">II", head[offset : offset + 8])
        if ext_type == _EXT_END:
            return
        if ext_type == _EXT_DATA_FILE:
            raise errors.ImageInvalid("the qcow2 image names an external data file")
        offset += 8 + (ext_len + 7) // 8 * 8
    if offset + 8 > size:
        raise errors.ImageInvalid("the qcow2 header extensions run past the end of the file")
    raise errors.ImageInvalid("the qcow2 header extensions are longer than 64 KiB")


def _cannot_run(detail: str) -> errors.ImageError:
    """qemu-img (or prlimit) could not be run: the host is broken, not the image (retried)."""
    return errors.ImageError(
        f"cannot run qemu-img: {detail}", reason=errors.Reason.invalid, transient=True
    )


def qemu_img_info(path: pathlib.Path, kind: Kind, limits: InspectLimits) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` with the format forced, under resource limits."""
    argv = [
        "prlimit",
        f"--as={limits.address_space_bytes}",
        f"--cpu={limits.cpu_seconds}",
        "--",
        limits.qemu_img,
        "info",
        "-f",
        kind.value,
        "--output=json",
        "--force-share",
        str(path),
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=limits.timeout_seconds, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise errors.ImageInvalid(
            f"qemu-img info did not finish within {limits.timeout_seconds:.0f}s"
        ) from exc
    except OSError as exc:  # prlimit missing
        raise _cannot_run(str(exc)) from exc
    if out.returncode in (126, 127) and "failed to execute" in out.stderr:  # qemu-img missing
        raise _cannot_run(out.stderr.strip()[-300:])
    if out.returncode != 0:
        message = out.stderr.strip().replace(str(path), path.name)[-300:]
        raise errors.ImageInvalid(f"not a valid {kind.value} image: {message}")
    try:
        info = json.loads(out.stdout)
    except ValueError as exc:
        raise errors.ImageInvalid(f"qemu-img info printed no JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise errors.ImageInvalid("qemu-img info printed no JSON object")
    return info


def check_info(info: dict[str, Any], kind: Kind, limits: InspectLimits) -> int:
    """Judge ``qemu-img info``'s JSON; returns the virtual size."""
    fmt = info.get("format")
    if fmt != kind.value:
        raise errors.ImageInvalid(f"declared {kind.value}, but qemu-img reads it as {fmt}")
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(key):
            raise errors.ImageInvalid("the image names a backing file")
    children = info.get("children") or []
    names = {c.get("name") for c in children if isinstance(c, dict)}
    if "data-file" in names:
        raise errors.ImageInvalid("the image uses an external data file")
    if "backing" in names:
        raise errors.ImageInvalid("the image names a backing file")
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {} if isinstance(specific, dict) else {}
    if not isinstance(data, dict):
        raise errors.ImageInvalid("qemu-img info's format-specific data is not an object")
    if data.get("data-file") or data.get("data-file-raw"):
        raise errors.ImageInvalid("the image uses an external data file")
    if data.get("corrupt"):
        raise errors.ImageInvalid("the image is marked corrupt")
    if info.get("encrypted") or data.get("encrypt"):
        raise errors.ImageInvalid("the image is encrypted")
    virtual = info.get("virtual-size")
    if not isinstance(virtual, int) or virtual <= 0:
        raise errors.ImageInvalid(f"the image has no usable virtual size ({virtual!r})")
    if virtual > limits.max_virtual_bytes:
        raise errors.ImageInvalid(
            f"the image's virtual size is {virtual} bytes, more than the "
            f"{limits.max_virtual_bytes} accepted"
        )
    return virtual
