"""The host's image cache: each file fetched once over HTTP(S) under the source policy, verified
by SHA-256, inspected as the kind of file it is declared to be, and kept under its checksum.
Images are untrusted input (see :mod:`.fetch` and :mod:`.inspect` for what that means here);
a partial, corrupt, refused or oversized download never becomes a cache entry.

Failures are typed (:mod:`.errors`) and remembered per image: a transient one (a dead server, a
full disk) is not tried again before its back-off (10 s doubling to 10 min) is over, and a
permanent one (refused, invalid, checksum mismatch) not for ten minutes, however many Servers
or resyncs ask meanwhile. The error raised says when to ask again (``retry_after``).

Entries unused for a day that back no disk are removed by :mod:`.gc` (Nova's image cache
manager keeps ``remove_unused_original_minimum_age_seconds``, a day, too).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import pathlib
import re
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable

from kubenova_agent import workqueue
from kubenova_agent.images import errors, fetch, inspect
from kubenova_agent.images.errors import ChecksumMismatch, ImageError, Reason
from kubenova_agent.images.inspect import Inspection, Kind
from kubenova_api import imagesource

log = logging.getLogger(__name__)

QCOW2_MAGIC = inspect.QCOW2_MAGIC
PERMANENT_REASONS = frozenset(r.value for r in errors.PERMANENT)
"""Reasons a Server stays in ERROR for until its spec changes (for reconcile)."""

_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)

__all__ = [
    "PERMANENT_REASONS",
    "ChecksumMismatch",
    "ImageCache",
    "ImageError",
    "ImageSettings",
    "Inspection",
    "Kind",
    "Reason",
    "errors",
    "has_backing_file",
    "virtual_size",
]


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """Everything about images an admin sets on the agent."""

    sources: imagesource.SourcePolicy = dataclasses.field(default_factory=imagesource.SourcePolicy)
    """Where images may come from."""
    download: fetch.FetchLimits = dataclasses.field(default_factory=fetch.FetchLimits)
    """Size cap and deadline of one download."""
    inspection: inspect.InspectLimits = dataclasses.field(default_factory=inspect.InspectLimits)
    """Virtual size and kernel/ramdisk limits."""
    ca_file: str | None = None
    """CA certificates for https image servers (the system's when unset)."""
    min_free_bytes: int = 1 << 30
    """Room a download must leave on the cache's filesystem (a download announced bigger than
    what is free minus this fails at once with ``DiskFull``)."""
    gc_min_unused_seconds: float = 86400.0
    """A cached image unused this long, backing no disk, is removed."""
    gc_interval_seconds: float = 3600.0
    """How often unused images are looked for."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cached image file."""

    path: pathlib.Path
    sha256: str
    size: int
    last_used: float
    """When it was last handed out (wall clock, the file's mtime)."""


@dataclasses.dataclass
class _Failure:
    error: ImageError
    until: float
    count: int


class ImageCache:
    """Files under ``directory``, named by their SHA-256."""

    RETRY_BASE = 10.0
    RETRY_CAP = 600.0
    PERMANENT_HOLD = 600.0

    def __init__(
        self,
        directory: str,
        settings: ImageSettings | None = None,
        *,
        checker: imagesource.SourceChecker | None = None,
    ) -> None:
        self.directory = pathlib.Path(directory)
        self.settings = settings or ImageSettings()
        self.checker = checker or imagesource.SourceChecker(self.settings.sources)
        self._tls = (
            ssl.create_default_context(cafile=self.settings.ca_file)
            if self.settings.ca_file
            else None
        )
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._inspected: dict[tuple[str, Kind], Inspection] = {}
        self._failures: dict[tuple[str, str, Kind], _Failure] = {}

    def clean_partial(self) -> list[str]:
        """Delete downloads that a killed agent left half-written."""
        if not self.directory.exists():
            return []
        removed = []
        for path in self.directory.glob(".*"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    def path_of(self, sha256: str) -> pathlib.Path:
        return self.directory / sha256

    def _lock(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sha256, threading.Lock())

    # ------------------------------------------------------------------------ ensure

    def ensure(self, url: str, sha256: str, kind: Kind | str) -> pathlib.Path:
        """The cached file with checksum ``sha256``, fetched from ``url`` if not cached yet, and
        inspected as a ``kind`` (once per agent process) before it is handed out.

        Raises :class:`ImageError` with a typed reason; nothing is left in the cache then."""
        kind = Kind(kind)
        key = (url, sha256, kind)
        self._raise_if_held(key)
        try:
            path = self._ensure(url, sha256, kind)
        except ImageError as exc:
            self._remember(key, exc)
            raise
        with self._guard:
            self._failures.pop(key, None)
        return path

    def inspection(self, sha256: str, kind: Kind | str) -> Inspection | None:
        """What inspecting a cached file as ``kind`` found, if it was inspected."""
        with self._guard:
            return self._inspected.get((sha256, Kind(kind)))

    def _ensure(self, url: str, sha256: str, kind: Kind) -> pathlib.Path:
        target = self.path_of(sha256)
        with self._lock(sha256):
            if target.exists():
                self._inspect(target, sha256, kind)
                _touch(target)
                return target
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{sha256[:12]}-")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:

                    def write(chunk: bytes) -> None:
                        digest.update(chunk)
                        out.write(chunk)

                    fetch.fetch(
                        url,
                        self.checker,
                        self.settings.download,
                        write,
                        on_length=self._room_for,
                        tls=self._tls,
                    )
                    out.flush()
                    os.fsync(out.fileno())
                actual = digest.hexdigest()
                if actual != sha256:
                    raise ChecksumMismatch(url, sha256, actual)
                self._inspect(pathlib.Path(tmp_name), sha256, kind)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, target)
                log.info("cached %s as %s", url, target)
                return target
            except OSError as exc:
                if exc.errno in _NO_ROOM:
                    raise errors.DiskFull(
                        f"no room for {url} in the image cache {self.directory}: {exc.strerror}"
                    ) from exc
                raise ImageError(
                    f"caching {url} failed: {exc}", reason=Reason.fetch_failed, transient=True
                ) from exc
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)

    def _inspect(self, path: pathlib.Path, sha256: str, kind: Kind) -> Inspection:
        with self._guard:
            found = self._inspected.get((sha256, kind))
        if found is None:
            found = inspect.inspect(path, kind, self.settings.inspection)
            with self._guard:
                self._inspected[(sha256, kind)] = found
        return found

    def _room_for(self, length: int) -> None:
        st = os.statvfs(self.directory)
        free = st.f_bavail * st.f_frsize
        if length + self.settings.min_free_bytes > free:
            raise errors.DiskFull(
                f"the image cache {self.directory} has {free >> 20} MiB free; the image needs "
                f"{length >> 20} MiB and {self.settings.min_free_bytes >> 20} MiB must stay free"
            )

    # ------------------------------------------------------------------------ back-off

    def _raise_if_held(self, key: tuple[str, str, Kind]) -> None:
        with self._guard:
            failure = self._failures.get(key)
        if failure is None:
            return
        left = failure.until - time.monotonic()
        if left > 0:
            failure.error.retry_after = left
            raise failure.error.with_traceback(None)

    def _remember(self, key: tuple[str, str, Kind], exc: ImageError) -> None:
        now = time.monotonic()
        with self._guard:
            for k in [k for k, f in self._failures.items() if f.until <= now - self.RETRY_CAP]:
                del self._failures[k]  # long expired: forget
            old = self._failures.get(key)
            count = (old.count if old is not None else 0) + 1
            if exc.transient:
                delay = workqueue.backoff_delay(count - 1, self.RETRY_BASE, self.RETRY_CAP)
            else:
                delay = self.PERMANENT_HOLD
            exc.retry_after = delay
            self._failures[key] = _Failure(exc, now + delay, count)
        log.warning("image %s: %s (%s); not tried again for %.0fs", key[0], exc, exc.reason, delay)

    # ------------------------------------------------------------------------ for gc

    def entries(self) -> list[Entry]:
        """Every complete cache entry (partial downloads are dot-files and not listed)."""
        out: list[Entry] = []
        if not self.directory.exists():
            return out
        for path in self.directory.iterdir():
            if not _SHA256_NAME.match(path.name):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append(Entry(path, path.name, st.st_size, st.st_mtime))
        return out

    def remove_if(self, sha256: str, unused: Callable[[Entry], bool]) -> bool:
        """Remove entry ``sha256`` if ``unused`` still says so under its lock (no ``ensure``
        of it can hand it out meanwhile); returns whether it was removed."""
        with self._lock(sha256):
            path = self.path_of(sha256)
            try:
                st = path.stat()
            except FileNotFoundError:
                return False
            if not unused(Entry(path, sha256, st.st_size, st.st_mtime)):
                return False
            path.unlink(missing_ok=True)
            with self._guard:
                for k in [k for k in self._inspected if k[0] == sha256]:
                    del self._inspected[k]
            return True


def _touch(path: pathlib.Path) -> None:
    """Mark ``path`` as just used (the collector's clock)."""
    try:
        os.utime(path)
    except OSError as exc:
        log.debug("cannot mark %s used: %s", path, exc)


def virtual_size(path: pathlib.Path, fmt: str) -> int:
    """The size a guest sees of a disk image: the qcow2 header's size, or a raw file's length."""
    if fmt == "raw":
        return path.stat().st_size
    with path.open("rb") as f:
        header = f.read(32)
    if header[:4] != QCOW2_MAGIC:
        raise errors.ImageInvalid(f"{path.name} is not a qcow2 image")
    (size,) = struct.unpack(">Q", header[24:32])
    return int(size)


def has_backing_file(path: pathlib.Path) -> bool:
    """Whether a qcow2 image names a backing file (refused: it could read any host file)."""
    with path.open("rb") as f:
        header = f.read(20)
    if header[:4] != QCOW2_MAGIC:
        return False
    (offset,) = struct.unpack(">Q", header[8:16])
    return bool(offset)
