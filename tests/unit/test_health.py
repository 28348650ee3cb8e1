"""The probes' endpoint answers what its checks say, and a failing check is a 503."""

from __future__ import annotations

import urllib.error
import urllib.request

from kubenova_api import health


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_healthz_and_readyz_follow_their_checks() -> None:
    ready = {"now": False}

    def broken() -> bool:
        raise RuntimeError("a check that fails counts as not ok")

    server = health.serve("127.0.0.1:0", alive=lambda: True, ready=lambda: ready["now"])
    other = health.serve("127.0.0.1:0", alive=broken, ready=lambda: True)
    assert server is not None and other is not None
    try:
        assert _status(server.port, "/healthz") == 200
        assert _status(server.port, "/readyz") == 503
        ready["now"] = True
        assert _status(server.port, "/readyz") == 200
        assert _status(server.port, "/metrics") == 404
        assert _status(other.port, "/healthz") == 503
    finally:
        server.stop()
        other.stop()


def test_no_address_serves_nothing_and_the_flag_is_taken_out() -> None:
    assert health.serve(None, alive=lambda: True, ready=lambda: True) is None
    address, rest = health.from_args(["--health-address=:8081", "--host-name", "h"])
    assert address == ":8081"
    assert rest == ["--host-name", "h"]


def test_a_heartbeat_goes_stale() -> None:
    beat = health.Heartbeat(max_age=0.0)
    assert not beat.fresh()
    assert health.Heartbeat(max_age=60).fresh()
