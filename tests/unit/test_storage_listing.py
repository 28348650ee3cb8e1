"""Listing a host's disks while its pool is rescanned by someone else (the heartbeat, another
Server's disk being made): libvirt drops and re-adds every volume of a pool on a rescan, so a
volume just listed can be "not found" when its size is read or it is deleted. The listing is
read again then: a disk is never left out (a migration copies exactly the disks listed) and
never left behind. The pool is the test
driver's, and the "not found" is libvirt's own error for a volume it does not have."""

from __future__ import annotations

import pathlib
from typing import Any

import libvirt
import pytest

from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.host import Host
from kubenova_agent.libvirt.storage import Storage
from kubenova_devenv import simhost

pytestmark = pytest.mark.timeout(60)


class VanishingVolume:
    """A volume listed before a rescan: reading its size fails as libvirt fails it then."""

    def __init__(self, vol: libvirt.virStorageVol, pool: libvirt.virStoragePool) -> None:
        self._vol, self._pool = vol, pool

    def name(self) -> str:
        return str(self._vol.name())

    def info(self) -> Any:
        return self._pool.storageVolLookupByName("gone-in-a-rescan").info()

    def delete(self, flags: int) -> None:
        self._pool.storageVolLookupByName("gone-in-a-rescan").delete(flags)


class RescannedPool:
    """The agent's pool, rescanned by another caller during its first ``races`` listings."""

    def __init__(self, pool: libvirt.virStoragePool, races: int) -> None:
        self._pool, self.races, self.listings = pool, races, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def listAllVolumes(self, flags: int) -> list[Any]:
        self.listings += 1
        vols: list[Any] = list(self._pool.listAllVolumes(flags))
        if self.listings <= self.races:
            return [VanishingVolume(vol, self._pool) for vol in vols]
        return vols


@pytest.fixture
def storage(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    host = Host(simhost.write_host_file(tmp_path / "host.xml"))
    storage = Storage(host, "kubenova", str(tmp_path / "instances"))
    storage.ensure_pool()
    for disk in ("uid-1-root.qcow2", "uid-1-eph0.qcow2", "uid-2-root.qcow2"):
        storage.ensure_volume(disk, 1 << 20, None)
    yield storage
    host.close()


def test_a_volume_gone_mid_listing_is_read_again_not_left_out(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = RescannedPool(storage._pool(), races=2)
    monkeypatch.setattr(storage, "_pool", lambda: pool)
    assert sorted(name for name, _ in storage.volumes("uid-1-")) == [
        "uid-1-eph0.qcow2",
        "uid-1-root.qcow2",
    ]
    assert pool.listings == 3


def test_a_volume_gone_mid_delete_is_deleted_on_the_next_listing(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = RescannedPool(storage._pool(), races=1)
    monkeypatch.setattr(storage, "_pool", lambda: pool)
    assert storage.delete_volumes("uid-1-") == ["uid-1-eph0.qcow2", "uid-1-root.qcow2"]
    assert [name for name, _ in storage.volumes("")] == ["uid-2-root.qcow2"]


def test_a_listing_that_never_settles_is_a_transient_error(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = RescannedPool(storage._pool(), races=1000)
    monkeypatch.setattr(storage, "_pool", lambda: pool)
    with pytest.raises(errors.HypervisorError, match="kept changing") as raised:
        storage.volumes("uid-")
    assert raised.value.transient
