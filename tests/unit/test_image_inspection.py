"""Every downloaded disk image is inspected before first use (real ``qemu-img``): it must be the
declared format, with no backing file and no external data file, and of a sane virtual size;
otherwise it is refused as ``ImageInvalid`` and nothing stays cached."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from kubenova_agent import images
from kubenova_agent.images import inspect
from kubenova_api.imagesource import SourcePolicy
from tests.unit.recording_http import RecordingServer

pytestmark = pytest.mark.timeout(120)
LIMITS = inspect.InspectLimits()


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer("127.0.0.1")
    yield srv
    srv.stop()


def serve_and_cache(
    tmp_path: pathlib.Path, server: RecordingServer, path: pathlib.Path, kind: str, **kw: object
) -> pathlib.Path:
    data = path.read_bytes()
    url = server.serve(f"/{path.name}", data)
    policy = SourcePolicy(
        allowed_ports=None, permitted_networks=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    cache = images.ImageCache(
        str(tmp_path / "cache"),
        images.ImageSettings(sources=policy, **kw),  # type: ignore[arg-type]
    )
    return cache.ensure(url, hashlib.sha256(data).hexdigest(), kind)


def refused(
    tmp_path: pathlib.Path, server: RecordingServer, path: pathlib.Path, kind: str, **kw: object
) -> str:
    folder = tmp_path / "cache"
    before = sorted(folder.iterdir()) if folder.exists() else []
    with pytest.raises(images.ImageError) as err:
        serve_and_cache(tmp_path, server, path, kind, **kw)
    assert err.value.reason == "ImageInvalid" and not err.value.transient, err.value
    assert sorted(folder.iterdir()) == before  # nothing stays cached, not even a partial file
    return str(err.value)


def test_a_plain_qcow2_passes(tmp_path: pathlib.Path, server: RecordingServer) -> None:
    disk = tmp_path / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", str(disk), "64M")
    path = serve_and_cache(tmp_path, server, disk, "qcow2")
    assert path.read_bytes() == disk.read_bytes()
    got = inspect.inspect(path, inspect.Kind.qcow2, LIMITS)
    assert got.virtual_size == 64 << 20


def test_a_qcow2_with_an_external_data_file_is_refused(
    tmp_path: pathlib.Path, server: RecordingServer
) -> None:
    """The issue's attack: the guest would read a host file through its disk."""
    host_file = tmp_path / "host-secret"
    host_file.write_bytes(b"root:$6$secret\n".ljust(1 << 20, b"\0"))
    data = tmp_path / "data.raw"
    qemu_img("create", "-f", "raw", str(data), "1M")
    disk = tmp_path / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(disk), "1M")
    qemu_img("amend", "-f", "qcow2", "-o", f"data_file={host_file}", str(disk))
    message = refused(tmp_path, server, disk, "qcow2")
    assert "external data file" in message


def test_the_data_file_is_refused_by_qemu_img_too(tmp_path: pathlib.Path) -> None:
    """The second line of defence, should the header check ever miss a variant."""
    data = tmp_path / "data.raw"
    qemu_img("create", "-f", "raw", str(data), "1M")
    disk = tmp_path / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(disk), "1M")
    info = inspect.qemu_img_info(disk, inspect.Kind.qcow2, LIMITS)
    assert info["format-specific"]["data"]["data-file"] == str(data)
    with pytest.raises(images.errors.ImageInvalid, match="external data file"):
        inspect.check_info(info, inspect.Kind.qcow2, LIMITS)


def test_a_qcow2_with_a_backing_file_is_refused(
    tmp_path: pathlib.Path, server: RecordingServer
) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "1M")
    disk = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk))
    assert "backing file" in refused(tmp_path, server, disk, "qcow2")
    info = inspect.qemu_img_info(disk, inspect.Kind.qcow2, LIMITS)
    with pytest.raises(images.errors.ImageInvalid, match="backing file"):
        inspect.check_info(info, inspect.Kind.qcow2, LIMITS)


def test_the_declared_format_is_forced(tmp_path: pathlib.Path, server: RecordingServer) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\xeb\x63\x90MBR".ljust(1 << 20, b"\0"))
    assert "not a qcow2 image" in refused(tmp_path, server, raw, "qcow2")
    qcow = tmp_path / "real.qcow2"
    qemu_img("create", "-f", "qcow2", str(qcow), "1M")
    assert "declared raw, but the file is a qcow2 image" in refused(tmp_path, server, qcow, "raw")
    vmdk = tmp_path / "d.vmdk"
    vmdk.write_text('# Disk DescriptorFile\nRW 2048 FLAT "/etc/shadow" 0\n')
    assert "vmdk descriptor" in refused(tmp_path, server, vmdk, "raw")
    assert serve_and_cache(tmp_path, server, raw, "raw").stat().st_size == 1 << 20


def test_an_absurd_virtual_size_is_refused(tmp_path: pathlib.Path, server: RecordingServer) -> None:
    disk = tmp_path / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", str(disk), "8T")  # a small file saying 8 TiB
    assert disk.stat().st_size < 1 << 20
    message = refused(tmp_path, server, disk, "qcow2")
    assert "virtual size" in message
    small = inspect.InspectLimits(max_virtual_bytes=32 << 20)
    ok = tmp_path / "ok.qcow2"
    qemu_img("create", "-f", "qcow2", str(ok), "64M")
    assert "virtual size" in refused(tmp_path, server, ok, "qcow2", inspection=small)


def test_kernels_and_ramdisks_are_checked_for_size(
    tmp_path: pathlib.Path, server: RecordingServer
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + b"\0" * 4094)
    assert serve_and_cache(tmp_path, server, kernel, "kernel").stat().st_size == 4096
    empty = tmp_path / "initrd"
    empty.write_bytes(b"")
    assert "empty" in refused(tmp_path, server, empty, "ramdisk")
    big = tmp_path / "big-initrd"
    big.write_bytes(b"\0" * 8192)
    small = inspect.InspectLimits(max_boot_file_bytes=4096)
    assert "more than the 4096" in refused(tmp_path, server, big, "ramdisk", inspection=small)


def test_header_checks_without_qemu_img() -> None:
    good = bytearray(b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(96))
    good[100:104] = (104).to_bytes(4, "big")
    inspect.check_qcow2_header(bytes(good) + bytes(8), 1 << 20)
    for offset, value, why in [
        (8, (0x200).to_bytes(8, "big"), "backing file"),
        (32, (1).to_bytes(4, "big"), "encrypted"),
        (72, (4).to_bytes(8, "big"), "external data file"),
        (72, (1 << 40).to_bytes(8, "big"), "unknown features"),
        (4, (9).to_bytes(4, "big"), "version 9"),
    ]:
        bad = bytearray(good)
        bad[offset : offset + len(value)] = value
        with pytest.raises(images.errors.ImageInvalid, match=why):
            inspect.check_qcow2_header(bytes(bad) + bytes(8), 1 << 20)
    ext = bytes(good) + b"DATA" + (11).to_bytes(4, "big") + b"/etc/shadow\0" + bytes(12)
    with pytest.raises(images.errors.ImageInvalid, match="names an external data file"):
        inspect.check_qcow2_header(ext, 1 << 20)


@pytest.mark.parametrize(
    ("info", "why"),
    [
        ({"format": "raw", "virtual-size": 1}, "reads it as raw"),
        ({"format": "qcow2", "virtual-size": 1, "full-backing-filename": "/x"}, "backing"),
        (
            {"format": "qcow2", "virtual-size": 1, "format-specific": {"data": {"corrupt": True}}},
            "corrupt",
        ),
        ({"format": "qcow2", "virtual-size": 1, "encrypted": True}, "encrypted"),
        ({"format": "qcow2", "virtual-size": -1}, "no usable virtual size"),
        ({"format": "qcow2"}, "no usable virtual size"),
        (
            {"format": "qcow2", "virtual-size": 1, "children": [{"name": "data-file"}]},
            "external data file",
        ),
    ],
)
def test_qemu_img_json_is_judged(info: dict[str, object], why: str) -> None:
    with pytest.raises(images.errors.ImageInvalid, match=why):
        inspect.check_info(json.loads(json.dumps(info)), inspect.Kind.qcow2, LIMITS)


def test_a_host_without_qemu_img_is_a_host_fault_not_an_invalid_image(
    tmp_path: pathlib.Path,
) -> None:
    """prlimit cannot run the missing program: the image is not to blame, so the error is
    transient (retried, nothing marked invalid) and says what is missing."""
    disk = tmp_path / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", str(disk), "1M")
    limits = inspect.InspectLimits(qemu_img=str(tmp_path / "no-such-qemu-img"))
    with pytest.raises(images.ImageError) as err:
        inspect.inspect(disk, inspect.Kind.qcow2, limits)
    assert err.value.transient
    assert "cannot run qemu-img" in str(err.value)
    assert "no-such-qemu-img" in str(err.value)
