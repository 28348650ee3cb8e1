"""The image cache over real HTTP: fetched once, verified, never kept when corrupt."""

from __future__ import annotations

import hashlib
import ipaddress
import pathlib
import struct

import pytest

from kubenova_agent import images
from kubenova_api.imagesource import SourcePolicy
from kubenova_devenv.imageserver import ImageServer

LOOPBACK_OPT_IN = images.ImageSettings(
    sources=SourcePolicy(
        allowed_ports=None, permitted_networks=(ipaddress.ip_network("127.0.0.1/32"),)
    )
)


def cache_at(folder: pathlib.Path, **download: float) -> images.ImageCache:
    settings = LOOPBACK_OPT_IN
    if download:
        settings = images.ImageSettings(
            sources=LOOPBACK_OPT_IN.sources, download=images.fetch.FetchLimits(**download)
        )
    return images.ImageCache(str(folder), settings)


@pytest.fixture
def served(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "served"
    root.mkdir()
    server = ImageServer(root)
    server.start()
    yield root, server
    server.stop()


def test_the_default_policy_refuses_the_test_beds_server(served, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    """Loopback and unusual ports need the admin's explicit opt-in (the devenv's flags)."""
    root, server = served
    (root / "k").write_bytes(b"kernel bits")
    cache = images.ImageCache(str(tmp_path / "cache"))
    with pytest.raises(images.ImageError) as err:
        cache.ensure(server.url("k"), hashlib.sha256(b"kernel bits").hexdigest(), "kernel")
    assert err.value.reason == "ImageSourceRefused"


def test_fetches_once_and_verifies(served, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    root, server = served
    (root / "k").write_bytes(b"kernel bits" * 1000)
    sha = hashlib.sha256((root / "k").read_bytes()).hexdigest()
    cache = cache_at(tmp_path / "cache")
    path = cache.ensure(server.url("k"), sha, "kernel")
    assert path.read_bytes() == (root / "k").read_bytes()
    (root / "k").unlink()  # a second ensure must not fetch again
    assert cache.ensure(server.url("k"), sha, "kernel") == path


def test_mismatch_is_permanent_and_leaves_nothing(served, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    root, server = served
    (root / "k").write_bytes(b"tampered")
    cache = cache_at(tmp_path / "cache")
    with pytest.raises(images.ChecksumMismatch) as err:
        cache.ensure(server.url("k"), "0" * 64, "kernel")
    assert err.value.reason == "ImageChecksumMismatch" and not err.value.transient
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_file_and_unreachable_server(served, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    _, server = served
    cache = cache_at(tmp_path / "cache", io_timeout_seconds=2)
    with pytest.raises(images.ImageError) as err:
        cache.ensure(server.url("nope"), "0" * 64, "qcow2")
    assert "HTTP 404" in str(err.value) and not err.value.transient
    with pytest.raises(images.ImageError) as err:
        cache.ensure("http://127.0.0.1:9/x", "0" * 64, "qcow2")
    assert err.value.transient


def test_qcow2_virtual_size_and_backing_file_detection(tmp_path: pathlib.Path) -> None:
    header = b"QFI\xfb" + struct.pack(">I", 3) + struct.pack(">Q", 0) + b"\0" * 8
    header += struct.pack(">Q", 5 << 30)
    (tmp_path / "plain.qcow2").write_bytes(header.ljust(512, b"\0"))
    assert images.virtual_size(tmp_path / "plain.qcow2", "qcow2") == 5 << 30
    assert not images.has_backing_file(tmp_path / "plain.qcow2")
    backed = bytearray(header.ljust(512, b"\0"))
    backed[8:16] = struct.pack(">Q", 0x200)
    (tmp_path / "backed.qcow2").write_bytes(bytes(backed))
    assert images.has_backing_file(tmp_path / "backed.qcow2")
    (tmp_path / "raw").write_bytes(b"\0" * 4096)
    assert images.virtual_size(tmp_path / "raw", "raw") == 4096
    with pytest.raises(images.ImageError):
        images.virtual_size(tmp_path / "raw", "qcow2")
