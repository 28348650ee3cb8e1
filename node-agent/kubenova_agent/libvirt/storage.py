"""Guest disks as volumes of a libvirt ``dir`` storage pool: copy-on-write overlays over the
image cache (``<backingStore>``), or blank disks, named after the Server's UID."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import libvirt
from lxml import etree

from kubenova_agent.driver import Backing, PoolUsage
from kubenova_agent.libvirt import _conv, errors
from kubenova_agent.libvirt.host import Host

log = logging.getLogger(__name__)

REFRESH_PATIENCE_SECONDS = 10.0
"""How long a refresh waits for the builds of other volumes of its pool (libvirt refuses to
rescan a pool while one is being built): an overlay takes a fraction of a second, a blank
disk of a few GiB a few seconds on a slow file system."""


def pool_xml(name: str, path: str) -> str:
    pool = etree.Element("pool", type="dir")
    etree.SubElement(pool, "name").text = name
    target = etree.SubElement(pool, "target")
    etree.SubElement(target, "path").text = path
    return etree.tostring(pool, encoding="unicode")


def volume_xml(name: str, capacity_bytes: int, backing: Backing | None) -> str:
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
    target = etree.SubElement(vol, "target")
    etree.SubElement(target, "format", type="qcow2")
    if backing is not None:
        store = etree.SubElement(vol, "backingStore")
        etree.SubElement(store, "path").text = backing.path
        etree.SubElement(store, "format", type=backing.format)
    return etree.tostring(vol, encoding="unicode")


def _volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    """Volume ``name`` of ``pool``, or None when the pool has none by that name."""
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise
        return None


def try_refresh(pool: libvirt.virStoragePool, patience: float) -> bool:
    """Rescan ``pool``'s folder; False when libvirt still refused after ``patience`` seconds
    because other volumes of the pool were being built (it refuses a rescan then: a build is
    an asynchronous job of the pool). Any other error raises."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            pool.refresh(0)
            return True
        except libvirt.libvirtError as exc:
            if not _conv.pool_busy(exc):
                raise
            if time.monotonic() + delay > deadline:
                return False
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def refresh(pool: libvirt.virStoragePool, patience: float = REFRESH_PATIENCE_SECONDS) -> None:
    """Rescan ``pool``'s folder, waiting up to ``patience`` seconds for builds of other
    volumes of it; still refused after that, a transient :class:`errors.HypervisorError`
    (the caller's work is tried again later)."""
    if not try_refresh(pool, patience):
        raise errors.HypervisorError(
            f"storage pool {pool.name()} is still building volumes after {patience:.0f}s",
            transient=True,
            code=libvirt.VIR_ERR_INTERNAL_ERROR,
        )


VOLUME_LISTING_ATTEMPTS = 5


def _sized_volumes(pool: libvirt.virStoragePool, prefix: str) -> list[tuple[str, int]] | None:
    """(name, bytes allocated) of the volumes of ``pool`` named ``prefix``…, or None when one
    of them was gone by the time its size was read (deleted, or the pool being rescanned)."""
    sized = []
    for vol in pool.listAllVolumes(0):
        name = str(vol.name())
        if not name.startswith(prefix):
            continue
        try:
            sized.append((name, int(vol.info()[2])))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
            return None
    return sized


class Storage:
    """The agent's storage pool on one host."""

    def __init__(self, host: Host, pool_name: str, pool_path: str) -> None:
        self._host = host
        self.pool_name = pool_name
        self.pool_path = pool_path

    def _pool(self) -> libvirt.virStoragePool:
        conn = self._host.conn
        try:
            pool = conn.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            log.info("defining storage pool %s at %s", self.pool_name, self.pool_path)
            pool = conn.storagePoolDefineXML(pool_xml(self.pool_name, self.pool_path), 0)
            pool.build(0)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        return pool

    def ensure_pool(self) -> None:
        with _conv.translated():
            self._pool()

    def usage(self) -> PoolUsage:
        with _conv.translated():
            pool = self._pool()
            # Figures of the last rescan while a volume is being built: a heartbeat neither
            # waits for a build nor reports libvirt unreachable because of one.
            try_refresh(pool, 0)
            _state, capacity, allocation, available = pool.info()
        return PoolUsage(capacity, allocation, available)

    def ensure_volume(self, name: str, capacity_bytes: int, backing: Backing | None) -> str:
        """The path of volume ``name``, created (as an overlay of ``backing``) if missing."""
        with _conv.translated():
            pool = self._pool()
            vol = _volume(pool, name)
            if vol is None:
                refresh(pool)  # a file left by a killed agent appears only after a refresh
                vol = _volume(pool, name)
            if vol is not None:
                return str(vol.path())
            vol = pool.createXML(volume_xml(name, capacity_bytes, backing), 0)
            return str(vol.path())

    def ensure_file_volume(self, name: str, write: Callable[[str], None]) -> str:
        """The path of volume ``name``; if missing, ``write(path)`` makes the file in the pool's
        folder first (atomically: a temporary name, then a rename) and the pool is refreshed."""
        with _conv.translated():
            pool = self._pool()
            vol = _volume(pool, name)
            if vol is not None:
                return str(vol.path())
        target = os.path.join(self.pool_path, name)
        if not os.path.exists(target):
            os.makedirs(self.pool_path, exist_ok=True)  # the test driver's pools are in memory
            tmp = os.path.join(self.pool_path, f".{name}.tmp")
            write(tmp)
            os.replace(tmp, target)
        with _conv.translated():
            refresh(pool)
        return target

    def volumes(self, prefix: str) -> list[tuple[str, int]]:
        """(name, bytes allocated) of every volume whose name starts with ``prefix``.

        A rescan of the pool by another caller (the heartbeat, another Server's disk being
        made) drops and re-adds every volume of it, so a volume listed a moment ago can be
        "not found" when its size is read: the listing is read again then, never returned
        without it (a migration copies exactly the disks listed here)."""
        with _conv.translated():
            pool = self._pool()
            refresh(pool)
            for _ in range(VOLUME_LISTING_ATTEMPTS):
                listed = _sized_volumes(pool, prefix)
                if listed is not None:
                    return listed
                time.sleep(0.05)
        raise errors.HypervisorError(
            f"the volumes of storage pool {self.pool_name} kept changing while being listed",
            transient=True,
            code=libvirt.VIR_ERR_NO_STORAGE_VOL,
        )

    def backing_files(self) -> list[str]:
        """The backing file of every volume of the pool (what the image cache must keep)."""
        found = []
        with _conv.translated():
            pool = self._pool()
            refresh(pool)
            for vol in pool.listAllVolumes(0):
                try:
                    xml = vol.XMLDesc(0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                        continue  # deleted while listing
                    raise
                paths = etree.fromstring(xml.encode()).xpath("backingStore/path/text()")
                assert isinstance(paths, list)
                found += [str(p) for p in paths]
        return found

    def grow_volume(self, name: str, capacity_bytes: int) -> bool:
        """Make volume ``name`` at least ``capacity_bytes`` big (never smaller); True if it
        grew. Only for a volume no running guest uses."""
        with _conv.translated():
            vol = self._pool().storageVolLookupByName(name)
            if int(vol.info()[1]) >= capacity_bytes:
                return False
            vol.resize(capacity_bytes, 0)
            return True

    def delete_volumes(self, prefix: str) -> list[str]:
        """Delete every volume whose name starts with ``prefix``; returns their names.

        A volume "not found" at its delete was either deleted by someone else or dropped for
        a moment by a rescan of the pool (its file still there): the listing is read again
        until a pass finds nothing it could not delete, so no disk is left behind."""
        deleted: set[str] = set()
        with _conv.translated():
            pool = self._pool()
            refresh(pool)
            for _ in range(VOLUME_LISTING_ATTEMPTS):
                missed = False
                for vol in pool.listAllVolumes(0):
                    name = str(vol.name())
                    if not name.startswith(prefix):
                        continue
                    try:
                        vol.delete(0)
                        deleted.add(name)
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                            raise
                        missed = True
                if not missed:
                    return sorted(deleted)
                time.sleep(0.05)
        raise errors.HypervisorError(
            f"the volumes of storage pool {self.pool_name} kept changing while being deleted",
            transient=True,
            code=libvirt.VIR_ERR_NO_STORAGE_VOL,
        )
