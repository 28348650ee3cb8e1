"""Removing cached images nobody uses (Nova's image cache manager), never one a disk needs.

A cache file is in use when anything on the host names it: a volume of the libvirt pool as its
backing file, a domain (defined or running) as a disk, a backing file, a kernel or an initrd,
or a qcow2 file in the instances folder as its backing file (read from the header, for files
libvirt has not listed yet). An entry is removed only when none of these names it *and* it was
not handed out for ``min_unused_seconds`` (a day): a Server whose image was just fetched but
whose disk does not exist yet is safe. When any source of names fails (libvirtd is down),
nothing is removed: in doubt, keep.

The agent runs :class:`Collector` in a thread of its own (``run(stop)``), every
``gc_interval_seconds``; :func:`collect` is one pass, for tests and for an admin's trigger.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from kubenova_agent.images import ImageCache, inspect

log = logging.getLogger(__name__)

PathSource = Callable[[], Iterable[str]]
"""Paths of files something on the host uses (may raise: then nothing is removed)."""


@dataclasses.dataclass(frozen=True)
class Report:
    removed: tuple[str, ...] = ()
    """Checksums of the entries removed."""
    freed_bytes: int = 0
    in_use: int = 0
    """Entries kept because something names them."""
    recent: int = 0
    """Entries kept because they were used lately."""
    error: str | None = None
    """Why nothing was removed, when a source of names failed."""


def qcow2_backing_file(path: pathlib.Path) -> str | None:
    """The backing file a qcow2 file's header names (absolute, as QEMU resolves it), if any."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != inspect.QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not 0 < size <= 1023:
                return None
            f.seek(offset)
            name = f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return None
    if name.startswith(("json:", "nbd:", "http:", "https:")):
        return name
    return os.path.normpath(os.path.join(path.parent, name))


def backing_files_in(folder: str) -> PathSource:
    """A source of the backing files named by the qcow2 files directly in ``folder``."""

    def scan() -> list[str]:
        root = pathlib.Path(folder)
        if not root.is_dir():
            return []
        found = []
        for path in root.iterdir():
            if path.is_file():
                backing = qcow2_backing_file(path)
                if backing is not None:
                    found.append(backing)
        return found

    return scan


def _real(path: str) -> str:
    return os.path.realpath(path)


def collect(
    cache: ImageCache,
    sources: Sequence[PathSource],
    min_unused_seconds: float,
    now: Callable[[], float] = time.time,
) -> Report:
    """One pass: remove every entry that nothing names and nobody used lately."""
    try:
        used = {_real(p) for source in sources for p in source()}
    except Exception as exc:
        log.warning("image cache collection skipped: cannot tell what is in use (%s)", exc)
        return Report(error=str(exc))
    removed: list[str] = []
    freed = in_use = recent = 0
    for entry in cache.entries():
        if _real(str(entry.path)) in used:
            in_use += 1
            continue
        if now() - entry.last_used < min_unused_seconds:
            recent += 1
            continue
        if cache.remove_if(
            entry.sha256,
            lambda e: now() - e.last_used >= min_unused_seconds and _real(str(e.path)) not in used,
        ):
            removed.append(entry.sha256)
            freed += entry.size
            log.info("removed unused cached image %s (%d MiB)", entry.sha256, entry.size >> 20)
        else:
            recent += 1
    return Report(tuple(removed), freed, in_use, recent)


class Collector:
    """Collects every ``interval`` seconds until ``stop`` is set; never raises."""

    def __init__(
        self,
        cache: ImageCache,
        sources: Sequence[PathSource],
        min_unused_seconds: float,
        interval: float,
    ) -> None:
        self.cache = cache
        self.sources = list(sources)
        self.min_unused_seconds = min_unused_seconds
        self.interval = interval
        self.last: Report | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.last = collect(self.cache, self.sources, self.min_unused_seconds)
            except Exception:
                log.exception("image cache collection failed")
