"""Collecting unused cached images: never one that backs a disk or boots a domain (asked of a
real libvirt — the test driver — and read from real qcow2 headers), never one used lately, and
nothing at all when what is in use cannot be told."""

from __future__ import annotations

import os
import pathlib
import subprocess
import threading
import time

import pytest

from kubenova_agent import images
from kubenova_agent.images import gc
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.libvirt.guest import Guests
from kubenova_agent.libvirt.host import Host
from kubenova_agent.libvirt.storage import Backing, Storage
from kubenova_devenv import simhost

pytestmark = pytest.mark.timeout(60)
DAY = 86400.0


def put(cache: images.ImageCache, name: str, age: float) -> pathlib.Path:
    """A cache entry named like a sha256, last used ``age`` seconds ago."""
    sha = name.encode().hex().ljust(64, "0")[:64]
    cache.directory.mkdir(parents=True, exist_ok=True)
    path = cache.path_of(sha)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.fixture
def host(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    h = Host(simhost.write_host_file(tmp_path / "host.xml"))
    yield h
    h.close()


def test_collection_keeps_what_backs_a_disk_or_boots_a_domain(
    tmp_path: pathlib.Path, host: Host
) -> None:
    cache = images.ImageCache(str(tmp_path / "images"))
    instances = tmp_path / "instances"
    instances.mkdir()
    storage = Storage(host, "kubenova", str(instances))
    storage.ensure_pool()
    in_pool = put(cache, "in-pool", 2 * DAY)
    kernel = put(cache, "kernel", 2 * DAY)
    on_disk = put(cache, "on-disk", 2 * DAY)
    stale = put(cache, "stale", 2 * DAY)
    recent = put(cache, "recent", 60)
    partial = cache.directory / ".abc-partial"
    partial.write_bytes(b"half")
    # A volume of the pool backed by one entry (libvirt knows it) ...
    storage.ensure_volume("uid-1-root.qcow2", 1 << 20, Backing(str(in_pool), "qcow2"))
    # ... a domain booting another as its kernel ...
    Guests(host).define(
        domain_xml.build_domain_xml(
            domain_xml.DomainConfig(
                owner=domain_xml.Owner("ns", "vm", "5b0e6a36-9d1c-4b4e-8f6e-3c1f3f0b7a11"),
                virt_type=domain_xml.VirtType.test,
                vcpus=1,
                memory_mib=64,
                disks=(),
                console_log=str(tmp_path / "console.log"),
                boot=domain_xml.DirectKernelBoot(str(kernel), str(kernel), "console=ttyS0"),
            )
        )
    )
    # ... and a qcow2 file in the instances folder libvirt has not listed (a copy in flight).
    overlay = instances / "uid-2-root.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(on_disk),
            "-F",
            "qcow2",
            str(overlay),
        ],
        check=True,
    )
    sources = [storage.backing_files, host.domain_files, gc.backing_files_in(str(instances))]

    report = gc.collect(cache, sources, min_unused_seconds=DAY)

    assert report.error is None
    assert report.removed == (stale.name,)
    assert report.freed_bytes > 0
    assert (report.in_use, report.recent) == (3, 1)
    for kept in (in_pool, kernel, on_disk, recent, partial):
        assert kept.exists(), kept.name
    assert not stale.exists()


def test_nothing_is_removed_when_use_cannot_be_told(tmp_path: pathlib.Path) -> None:
    cache = images.ImageCache(str(tmp_path / "images"))
    old = put(cache, "old", 2 * DAY)

    def libvirtd_down() -> list[str]:
        raise ConnectionError("cannot connect to libvirtd")

    report = gc.collect(cache, [lambda: [], libvirtd_down], min_unused_seconds=DAY)
    assert report.error is not None and "libvirtd" in report.error
    assert old.exists() and report.removed == ()


def test_an_entry_handed_out_meanwhile_is_kept(tmp_path: pathlib.Path) -> None:
    """``ensure`` marks an entry used; the collector decides again under the entry's lock."""
    cache = images.ImageCache(str(tmp_path / "images"))
    old = put(cache, "old", 2 * DAY)
    entry = next(e for e in cache.entries() if e.path == old)
    images._touch(old)  # what ensure() does when it hands the file out
    assert not cache.remove_if(entry.sha256, lambda e: time.time() - e.last_used >= DAY)
    assert old.exists()


def test_the_collector_runs_until_stopped(tmp_path: pathlib.Path) -> None:
    cache = images.ImageCache(str(tmp_path / "images"))
    old = put(cache, "old", 2 * DAY)
    collector = gc.Collector(cache, [lambda: []], min_unused_seconds=DAY, interval=0.05)
    stop = threading.Event()
    t = threading.Thread(target=collector.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(5)
    assert not old.exists() and not t.is_alive()
    assert collector.last is not None


def test_backing_file_names_are_read_from_qcow2_headers(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    (tmp_path / "sub").mkdir()
    rel = tmp_path / "sub" / "rel.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../base.qcow2",
            "-F",
            "qcow2",
            str(rel),
        ],
        check=True,
    )
    assert gc.qcow2_backing_file(rel) == str(base)
    assert gc.qcow2_backing_file(base) is None
    (tmp_path / "raw").write_bytes(b"\0" * 100)
    assert gc.qcow2_backing_file(tmp_path / "raw") is None
