"""Downloading images as untrusted input, against real HTTP(S) servers on loopback: refused
sources are never fetched (the servers' request logs stay empty), every redirect and every
resolved address is checked, the connection goes to the address that was checked, and a
download stops at its size cap and its deadline."""

from __future__ import annotations

import hashlib
import ipaddress
import pathlib
import socket
import time
from collections.abc import Iterator

import pytest

from kubenova_agent import images
from kubenova_agent.images import fetch
from kubenova_api import imagesource
from kubenova_api.imagesource import SourcePolicy
from tests.unit.recording_http import RecordingServer, free_port_on, self_signed

pytestmark = pytest.mark.timeout(120)

PAYLOAD = b"KERNEL" * 5000
SHA = hashlib.sha256(PAYLOAD).hexdigest()
ANY_PORT = SourcePolicy(allowed_ports=None)


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every outgoing connection of the test; anything but loopback fails the test before a
    packet is sent (network safety, whatever the code under test does)."""
    attempts: list[tuple[str, int]] = []
    real = socket.socket.connect

    def guarded(self: socket.socket, address: tuple[str, int]) -> None:
        attempts.append((address[0], address[1]))
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise AssertionError(f"the test tried to connect to {address}")
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.fixture
def secret() -> Iterator[RecordingServer]:
    """What an attacker wants read: a service on the host's loopback."""
    srv = RecordingServer("127.0.0.1")
    srv.serve("/secret", b"the host's secret")
    yield srv
    srv.stop()


@pytest.fixture
def mirror() -> Iterator[RecordingServer]:
    """An image server the policy permits: 127.0.0.2, an admin's opt-in."""
    srv = RecordingServer("127.0.0.2")
    srv.serve("/vmlinuz", PAYLOAD)
    yield srv
    srv.stop()


def permitting(*networks: str, **kw: object) -> SourcePolicy:
    return SourcePolicy(
        allowed_ports=None,
        permitted_networks=tuple(ipaddress.ip_network(n) for n in networks),
        **kw,  # type: ignore[arg-type]
    )


def cache_in(tmp_path: pathlib.Path, policy: SourcePolicy, **kw: object) -> images.ImageCache:
    settings = images.ImageSettings(sources=policy, **kw)  # type: ignore[arg-type]
    return images.ImageCache(str(tmp_path / "cache"), settings)


def cached_files(tmp_path: pathlib.Path) -> list[str]:
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_a_loopback_url_is_refused_and_never_fetched(
    tmp_path: pathlib.Path,
    secret: RecordingServer,
    connects: list[tuple[str, int]],
    host: str,
) -> None:
    cache = cache_in(tmp_path, ANY_PORT)
    with pytest.raises(images.ImageError) as err:
        cache.ensure(secret.url("/secret", host), SHA, "kernel")
    assert err.value.reason == "ImageSourceRefused" and not err.value.transient
    assert "loopback" in str(err.value)
    assert secret.seen == [] and connects == []
    assert cached_files(tmp_path) == []


def test_a_link_local_url_is_refused_before_any_connection(
    tmp_path: pathlib.Path, connects: list[tuple[str, int]]
) -> None:
    cache = cache_in(tmp_path, ANY_PORT)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1%25lo]:8080/x"):
        with pytest.raises(images.ImageError) as err:
            cache.ensure(url, SHA, "qcow2")
        assert err.value.reason == "ImageSourceRefused"
        assert "link-local" in str(err.value)
    assert connects == []


@pytest.mark.parametrize(
    "to",
    [
        "http://127.0.0.1:{secret}/secret",
        "http://localhost:{secret}/secret",
        "http://169.254.169.254/latest/meta-data/iam/",
        "ftp://127.0.0.1/x",
    ],
)
def test_a_redirect_is_checked_like_the_first_url(
    tmp_path: pathlib.Path,
    secret: RecordingServer,
    mirror: RecordingServer,
    connects: list[tuple[str, int]],
    to: str,
) -> None:
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"))
    target = to.format(secret=secret.port)
    url = mirror.url(f"/redirect?to={target}")
    with pytest.raises(images.ImageError) as err:
        cache.ensure(url, SHA, "kernel")
    assert err.value.reason == "ImageSourceRefused", err.value
    assert f"(redirected from {url})" in str(err.value)
    assert [s.path for s in mirror.seen] == [f"/redirect?to={target}"]
    assert secret.seen == []
    assert all(host == "127.0.0.2" for host, _ in connects)
    assert cached_files(tmp_path) == []


def test_an_accepted_redirect_is_followed(tmp_path: pathlib.Path, mirror: RecordingServer) -> None:
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"))
    path = cache.ensure(
        mirror.url(f"/redirect?code=307&to={mirror.url('/vmlinuz')}"), SHA, "kernel"
    )
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(images.ImageError, match="more than 5 redirects") as err:
        cache.ensure(mirror.url("/loop"), "1" * 64, "kernel")
    assert not err.value.transient
    assert len(mirror.seen) == 2 + 6


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path: pathlib.Path) -> None:
    """DNS rebinding: the name resolves to a permitted address when checked and to the host's
    loopback afterwards. Resolving once and connecting to that address means the second
    answer is never used."""
    port = free_port_on("127.0.0.2", "127.0.0.1")
    good = RecordingServer("127.0.0.2", port)
    evil = RecordingServer("127.0.0.1", port)
    try:
        good.serve("/vmlinuz", PAYLOAD)
        evil.serve("/vmlinuz", b"the host's secret")
        answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)
        lookups: list[str] = []

        def rebinding(host: str, _port: int) -> list[imagesource.IPAddress]:
            lookups.append(host)
            return [ipaddress.ip_address(next(answers))]

        policy = permitting("127.0.0.2/32")
        checker = imagesource.SourceChecker(policy, resolver=rebinding)
        cache = images.ImageCache(
            str(tmp_path / "cache"), images.ImageSettings(sources=policy), checker=checker
        )
        path = cache.ensure(f"http://images.test:{port}/vmlinuz", SHA, "kernel")
        assert path.read_bytes() == PAYLOAD
        assert lookups == ["images.test"]
        assert [(s.path, s.host_header) for s in good.seen] == [("/vmlinuz", f"images.test:{port}")]
        assert evil.seen == []
    finally:
        good.stop()
        evil.stop()


def test_https_uses_the_host_name_for_sni_and_the_certificate(tmp_path: pathlib.Path) -> None:
    cert, key = self_signed(tmp_path, "images.test")
    srv = RecordingServer("127.0.0.2", tls=(cert, key))
    try:
        srv.serve("/vmlinuz", PAYLOAD)
        policy = permitting("127.0.0.2/32")
        checker = imagesource.SourceChecker(
            policy, resolver=lambda h, p: [ipaddress.ip_address("127.0.0.2")]
        )
        cache = images.ImageCache(
            str(tmp_path / "cache"),
            images.ImageSettings(sources=policy, ca_file=str(cert)),
            checker=checker,
        )
        path = cache.ensure(f"https://images.test:{srv.port}/vmlinuz", SHA, "kernel")
        assert path.read_bytes() == PAYLOAD
        assert [(s.host_header, s.server_name) for s in srv.seen] == [
            (f"images.test:{srv.port}", "images.test")
        ]
        # Without the name (the bare address) the certificate does not match: refused.
        with pytest.raises(images.ImageError) as err:
            cache.ensure(srv.url("/vmlinuz"), "2" * 64, "kernel")
        assert err.value.reason == "ImageFetchFailed" and "certificate" in str(err.value)
    finally:
        srv.stop()


def test_an_announced_oversized_download_is_refused_before_its_body(
    tmp_path: pathlib.Path, mirror: RecordingServer
) -> None:
    cap = images.fetch.FetchLimits(max_bytes=1 << 20)
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"), download=cap)
    with pytest.raises(images.ImageError) as err:
        cache.ensure(mirror.url(f"/announced?length={10 << 30}"), SHA, "qcow2")
    assert err.value.reason == "ImageTooLarge" and not err.value.transient
    assert cached_files(tmp_path) == []


def test_an_endless_download_stops_at_the_cap(
    tmp_path: pathlib.Path, mirror: RecordingServer
) -> None:
    cap = images.fetch.FetchLimits(max_bytes=4 << 20)
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"), download=cap)
    with pytest.raises(images.ImageError) as err:
        cache.ensure(mirror.url("/endless"), SHA, "raw")
    assert err.value.reason == "ImageTooLarge"
    assert mirror.hung_up.wait(30), "the server still streams"
    assert (4 << 20) < mirror.sent < (4 << 20) + (16 << 20), mirror.sent  # + socket buffers
    assert cached_files(tmp_path) == []


def test_a_trickle_stops_at_the_deadline(tmp_path: pathlib.Path, mirror: RecordingServer) -> None:
    limits = images.fetch.FetchLimits(deadline_seconds=1.5, io_timeout_seconds=1.0)
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"), download=limits)
    started = time.monotonic()
    with pytest.raises(images.ImageError) as err:
        cache.ensure(mirror.url("/trickle"), SHA, "raw")
    took = time.monotonic() - started
    assert err.value.reason == "ImageFetchTimeout" and err.value.transient
    assert took < 15, took  # 1.5 s deadline; each byte arrived well within the read timeout
    assert 0 < mirror.sent < 1000
    assert cached_files(tmp_path) == []


def test_failures_are_not_retried_before_their_backoff(
    tmp_path: pathlib.Path, mirror: RecordingServer, connects: list[tuple[str, int]]
) -> None:
    cache = cache_in(tmp_path, permitting("127.0.0.2/32"))
    closed = free_port_on("127.0.0.2")
    for _ in range(3):
        with pytest.raises(images.ImageError) as err:
            cache.ensure(f"http://127.0.0.2:{closed}/vmlinuz", SHA, "kernel")
        assert err.value.transient and 0 < err.value.retry_after <= 10
    assert len(connects) == 1  # held back twice, not hammered
    mirror.serve("/wrong", b"other bits")
    for _ in range(3):
        with pytest.raises(images.ChecksumMismatch):
            cache.ensure(mirror.url("/wrong"), SHA, "kernel")
    assert [s.path for s in mirror.seen] == ["/wrong"]  # a permanent failure is held longer
    assert cache.ensure(mirror.url("/vmlinuz"), SHA, "kernel").read_bytes() == PAYLOAD


def test_fetch_reports_where_the_bits_came_from(mirror: RecordingServer) -> None:
    chunks: list[bytes] = []
    checker = imagesource.SourceChecker(permitting("127.0.0.2/32"))
    got = fetch.fetch(
        mirror.url(f"/redirect?to={mirror.url('/vmlinuz')}"),
        checker,
        fetch.FetchLimits(),
        chunks.append,
    )
    assert (got.url, got.size, got.redirects) == (mirror.url("/vmlinuz"), len(PAYLOAD), 1)
    assert b"".join(chunks) == PAYLOAD
