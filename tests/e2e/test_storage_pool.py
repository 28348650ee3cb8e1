"""A real libvirtd refuses to rescan a storage pool while a volume of it is being built
(``pool 'x' has asynchronous jobs running.``). The agent rescans its pool on every heartbeat
and before it lists or deletes disks; one refused rescan once made a host report libvirt
unreachable, look down to the controller and fail a migration being prepared to it. Here a
thread builds volumes without pause while the heartbeat's figures and the listings are read."""

from __future__ import annotations

import threading
import time
import uuid

import libvirt
import pytest

from kubenova_agent.libvirt import _conv
from kubenova_agent.libvirt.host import Host
from kubenova_agent.libvirt.storage import Storage
from kubenova_devenv import stack

pytestmark = pytest.mark.timeout(120)

GIB = 1 << 30


def test_a_pool_being_built_in_still_reports_and_lists(bed: stack.Stack) -> None:
    uri = next(iter(bed.hosts.values())).uri
    name = f"refresh-{uuid.uuid4().hex[:6]}"  # not the agent's pool: its disks stay untouched
    builder_host, reader_host = Host(uri), Host(uri)
    building = Storage(builder_host, name, f"/var/lib/kubenova/{name}")
    reading = Storage(reader_host, name, building.pool_path)
    building.ensure_pool()
    stop = threading.Event()
    built: list[str] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            while not stop.is_set():
                building.ensure_volume(f"v{len(built)}.qcow2", 2 * GIB, None)
                built.append(f"v{len(built)}.qcow2")
        except BaseException as exc:  # reported below
            failed.append(exc)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    refused = reads = 0
    raw = reader_host.conn.storagePoolLookupByName(name)
    try:
        deadline = time.monotonic() + 30
        # Until libvirt has refused a plain rescan a few times (the race really ran), read
        # what the heartbeat and the disk bookkeeping read.
        while refused < 3 and time.monotonic() < deadline and not failed:
            try:
                raw.refresh(0)
            except libvirt.libvirtError as exc:
                assert _conv.pool_busy(exc), exc
                refused += 1
            usage = reading.usage()
            assert usage.capacity_bytes > 0
            finished = set(built)
            assert finished <= {v for v, _ in reading.volumes("v")}
            reads += 1
    finally:
        stop.set()
        thread.join(30)
        reading.delete_volumes("v")
        raw.destroy()
        raw.undefine()
        builder_host.close()
        reader_host.close()
    assert not failed, failed
    assert refused >= 3, f"libvirt never refused a rescan in 30s ({len(built)} volumes built)"
    assert reads >= refused and len(built) > 3
