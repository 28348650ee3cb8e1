"""The host's image cache: each file fetched once over HTTP(S), verified by SHA-256, and
kept under its checksum. A partial or corrupt download never becomes a cache entry."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import struct
import tempfile
import threading
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

QCOW2_MAGIC = b"QFI\xfb"


class ImageError(Exception):
    """Fetching or checking an image failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, *, reason: str, transient: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


class ChecksumMismatch(ImageError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}",
            reason="ImageChecksumMismatch",
            transient=False,
        )


class ImageCache:
    """Files under ``directory``, named by their SHA-256."""

    def __init__(self, directory: str, timeout: float = 60.0) -> None:
        self.directory = pathlib.Path(directory)
        self.timeout = timeout
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

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

    def ensure(self, url: str, sha256: str) -> pathlib.Path:
        """The cached file with checksum ``sha256``, fetched from ``url`` if not cached yet."""
        target = self.path_of(sha256)
        if target.exists():
            return target
        with self._lock(sha256):
            if target.exists():
                return target
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=f".{sha256[:12]}-")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    for chunk in self._download(url):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                actual = digest.hexdigest()
                if actual != sha256:
                    raise ChecksumMismatch(url, sha256, actual)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, target)
                log.info("cached %s as %s", url, target)
                return target
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)

    def _download(self, url: str) -> list[bytes] | _Chunks:
        if not url.startswith(("http://", "https://")):
            raise ImageError(f"unsupported URL {url}", reason="ImageFetchFailed", transient=False)
        try:
            resp = urllib.request.urlopen(url, timeout=self.timeout)  # noqa: S310 - checked above
        except urllib.error.HTTPError as exc:
            transient = exc.code >= 500 or exc.code == 429
            raise ImageError(
                f"fetching {url} failed: HTTP {exc.code} {exc.reason}",
                reason="ImageFetchFailed",
                transient=transient,
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ImageError(
                f"fetching {url} failed: {exc}", reason="ImageFetchFailed", transient=True
            ) from exc
        return _Chunks(resp, url)


class _Chunks:
    def __init__(self, resp: object, url: str) -> None:
        self._resp = resp
        self._url = url

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        try:
            chunk: bytes = self._resp.read(1 << 20)  # type: ignore[attr-defined]
        except OSError as exc:
            raise ImageError(
                f"fetching {self._url} failed: {exc}", reason="ImageFetchFailed", transient=True
            ) from exc
        if not chunk:
            self._resp.close()  # type: ignore[attr-defined]
            raise StopIteration
        return chunk


def virtual_size(path: pathlib.Path, fmt: str) -> int:
    """The size a guest sees of a disk image: the qcow2 header's size, or a raw file's length."""
    if fmt == "raw":
        return path.stat().st_size
    with path.open("rb") as f:
        header = f.read(32)
    if header[:4] != QCOW2_MAGIC:
        raise ImageError(
            f"{path.name} is not a qcow2 image", reason="ImageFormatInvalid", transient=False
        )
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
