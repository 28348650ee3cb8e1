"""Downloading an image over HTTP(S) as untrusted input: every URL (the first and each redirect)
is checked by the source policy (:mod:`kubenova_api.imagesource`), its host is resolved once
and every address checked, and the connection goes to an address that was checked — with the
URL's host name as the HTTP ``Host`` and the TLS server name (SNI and certificate check). A
second lookup at connect time, as ``urllib`` would make, lets a DNS answer that changes
between check and use (rebinding) reach a refused address.

The download has a size cap (checked against ``Content-Length`` before any byte is read, and
counted while reading, so an endless body stops at the cap) and one deadline for everything
(redirects, connecting, every read); a server that trickles a byte at a time cannot hold a
worker longer than that. Proxies from the environment are not used: a proxy resolves names
itself, out of the policy's reach.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

from kubenova_agent.images import errors
from kubenova_api import imagesource

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 20
USER_AGENT = "kubenova-agent"


@dataclasses.dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 64 << 30
    """The largest download accepted (the file, not its virtual size)."""
    deadline_seconds: float = 1800.0
    """How long one download may take in all: redirects, connecting and every read."""
    io_timeout_seconds: float = 60.0
    """How long one connect or read may wait for the server."""


@dataclasses.dataclass(frozen=True)
class Fetched:
    url: str
    """Where the bits came from in the end (after redirects)."""
    size: int
    redirects: int


Writer = Callable[[bytes], None]
"""Takes each chunk of the body (writes it to the partial file)."""

LengthHook = Callable[[int], None]
"""Told the announced ``Content-Length`` before the body is read (may refuse it by raising)."""


def fetch(
    url: str,
    checker: imagesource.SourceChecker,
    limits: FetchLimits,
    write: Writer,
    *,
    on_length: LengthHook | None = None,
    tls: ssl.SSLContext | None = None,
) -> Fetched:
    """Stream the body at ``url`` into ``write``, following redirects the policy accepts.

    Raises :class:`errors.ImageError` (``SourceRefused``, ``TooLarge``, ``ImageFetchTimeout``,
    ``ImageFetchFailed``); what ``write`` and ``on_length`` raise goes through unchanged."""
    deadline = time.monotonic() + limits.deadline_seconds
    current = url
    for hop in range(checker.policy.max_redirects + 1):
        target = _checked(checker, current, url if hop else None)
        conn, resp = _request(target, deadline, limits, tls)
        try:
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise errors.ImageError(
                        f"fetching {current}: HTTP {resp.status} without a Location",
                        reason=errors.Reason.fetch_failed,
                        transient=False,
                    )
                nxt = urllib.parse.urljoin(current, location.strip())
                log.info("image %s redirects to %s", current, nxt)
                current = nxt
                continue
            if resp.status != 200:
                raise errors.ImageError(
                    f"fetching {current} failed: HTTP {resp.status} {resp.reason}",
                    reason=errors.Reason.fetch_failed,
                    transient=resp.status >= 500 or resp.status in (408, 429),
                )
            size = _body(current, resp, conn, deadline, limits, write, on_length)
            return Fetched(current, size, hop)
        finally:
            resp.close()
            conn.close()
    raise errors.ImageError(
        f"fetching {url}: more than {checker.policy.max_redirects} redirects",
        reason=errors.Reason.fetch_failed,
        transient=False,
    )


def _checked(
    checker: imagesource.SourceChecker, url: str, redirected_from: str | None
) -> imagesource.Target:
    try:
        return checker.target(url)
    except imagesource.SourceRefused as exc:
        via = f" (redirected from {redirected_from})" if redirected_from else ""
        raise errors.SourceRefused(f"image source refused: {exc}{via}") from exc
    except LookupError as exc:
        raise errors.ImageError(
            f"fetching failed: {exc}", reason=errors.Reason.fetch_failed, transient=True
        ) from exc


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to one checked address, for the URL's host name."""

    def __init__(
        self,
        target: imagesource.Target,
        address: imagesource.IPAddress,
        timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.default_port = imagesource.DEFAULT_PORTS[target.scheme]
        self._address = address
        self._tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise errors.ImageError(
            f"fetching {url}: the download deadline passed",
            reason=errors.Reason.fetch_timeout,
            transient=True,
        )
    return left


def _request(
    target: imagesource.Target,
    deadline: float,
    limits: FetchLimits,
    tls: ssl.SSLContext | None,
) -> tuple[_PinnedConnection, http.client.HTTPResponse]:
    if target.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    failures = []
    for address in target.addresses:
        timeout = min(limits.io_timeout_seconds, _remaining(deadline, target.url))
        conn = _PinnedConnection(
            target, address, timeout, tls if target.scheme == "https" else None
        )
        try:
            conn.request(
                "GET",
                target.request_target,
                headers={"User-Agent": USER_AGENT, "Host": target.host_header},
            )
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            failures.append(f"{address}: {exc}")
            if isinstance(exc, TimeoutError | socket.timeout) and deadline <= time.monotonic():
                break
    _remaining(deadline, target.url)
    raise errors.ImageError(
        f"fetching {target.url} failed: {'; '.join(failures)}",
        reason=errors.Reason.fetch_failed,
        transient=True,
    )


def _body(
    url: str,
    resp: http.client.HTTPResponse,
    conn: _PinnedConnection,
    deadline: float,
    limits: FetchLimits,
    write: Writer,
    on_length: LengthHook | None,
) -> int:
    announced = _content_length(resp)
    if announced is not None:
        if announced > limits.max_bytes:
            raise errors.TooLarge(
                f"{url} is {announced} bytes, more than the {limits.max_bytes} bytes an image "
                "download may have"
            )
        if on_length is not None:
            on_length(announced)
    size = 0
    while True:
        left = _remaining(deadline, url)
        if conn.sock is not None:
            conn.sock.settimeout(min(limits.io_timeout_seconds, left))
        try:
            chunk = resp.read1(CHUNK)  # returns after one read: a trickle cannot outlast us
        except (OSError, http.client.HTTPException) as exc:
            _remaining(deadline, url)
            raise errors.ImageError(
                f"fetching {url} failed after {size} bytes: {exc}",
                reason=errors.Reason.fetch_failed,
                transient=True,
            ) from exc
        if not chunk:
            break
        size += len(chunk)
        if size > limits.max_bytes:
            raise errors.TooLarge(
                f"{url} sent more than the {limits.max_bytes} bytes an image download may have"
            )
        write(chunk)
    if announced is not None and size != announced:
        raise errors.ImageError(
            f"fetching {url}: the body ended after {size} of {announced} bytes",
            reason=errors.Reason.fetch_failed,
            transient=True,
        )
    return size


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    if value is None or resp.getheader("Transfer-Encoding"):
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None
