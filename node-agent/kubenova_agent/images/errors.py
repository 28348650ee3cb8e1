"""What can go wrong with an image, as typed reasons: each becomes a condition reason and an
Event on the Server (phase B of issue 13 wires them), and says whether trying again may help.

Permanent reasons stay until the Server's spec (or the Image) changes: trying again would
download the same refused bits again. Transient ones are retried with a back-off that the cache
keeps per image (``retry_after``), so that neither a resync nor many Servers of one Image turn a
full disk or a dead image server into a download loop."""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    fetch_failed = "ImageFetchFailed"
    """The server could not be reached or answered with an error."""
    fetch_timeout = "ImageFetchTimeout"
    """The download did not finish within its deadline."""
    checksum_mismatch = "ImageChecksumMismatch"
    """The bits are not the ones the Image's sha256 names."""
    invalid = "ImageInvalid"
    """Not a safe image of its declared format: another format, a backing file, an external
    data file, encrypted, corrupt, or bigger (virtual size) than the agent accepts."""
    source_refused = "ImageSourceRefused"
    """The source policy refuses the URL or an address it resolves or redirects to."""
    too_large = "ImageTooLarge"
    """The download is bigger than the agent's cap."""
    disk_full = "DiskFull"
    """The image cache's filesystem has no room for the file."""


PERMANENT = frozenset(
    {
        Reason.checksum_mismatch,
        Reason.invalid,
        Reason.source_refused,
        Reason.too_large,
    }
)
"""Reasons whose retry cannot succeed with the same spec (HTTP 4xx answers are permanent too,
under ``ImageFetchFailed``; see :attr:`ImageError.transient`)."""


class ImageError(Exception):
    """Fetching or checking an image failed; ``transient`` says whether a retry may help, and
    ``retry_after`` when (the cache's back-off for this image)."""

    def __init__(
        self, message: str, *, reason: str, transient: bool, retry_after: float = 10.0
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after


class ChecksumMismatch(ImageError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}",
            reason=Reason.checksum_mismatch,
            transient=False,
        )


class ImageInvalid(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.invalid, transient=False)


class SourceRefused(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.source_refused, transient=False)


class TooLarge(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.too_large, transient=False)


class DiskFull(ImageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.disk_full, transient=True)
