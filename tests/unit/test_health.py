"""The probes' endpoint answers what its checks say, and a failing check is a 503."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from kubenova_agent import settings as agent_settings
from kubenova_api import health
from kubenova_operator import leader
from kubenova_operator import settings as controller_settings


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


def test_no_address_serves_nothing_and_both_programs_take_the_flag() -> None:
    assert health.serve(None, alive=lambda: True, ready=lambda: True) is None
    agent = agent_settings.from_args(["--health-address=:8082", "--host-name", "h"])
    assert (agent.health_address, agent.host_name) == (":8082", "h")
    assert controller_settings.from_args([]).health_address is None
    assert controller_settings.from_args(["--health-address", ":8081"]).health_address == ":8081"


def test_leader_election_flags_and_their_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "kubenova")
    monkeypatch.setenv("POD_NAME", "ctl-0")
    cfg = controller_settings.from_args(["--leader-elect", "--leader-elect-lease-seconds", "12"])
    lead = leader.from_settings(cfg)
    assert lead.enabled and lead.namespace == "kubenova" and lead.lease_seconds == 12
    assert lead.identity.startswith("ctl-0_")
    assert leader.from_settings(cfg).identity != lead.identity  # a restart is a new candidate
    assert not leader.from_settings(controller_settings.from_args([])).enabled
    with pytest.raises(SystemExit, match="renew deadline"):
        leader.from_settings(
            controller_settings.from_args(
                ["--leader-elect", "--leader-elect-renew-deadline-seconds", "9"]
            )
        )
    monkeypatch.delenv("POD_NAMESPACE")
    with pytest.raises(SystemExit, match="namespace"):
        leader.from_settings(controller_settings.from_args(["--leader-elect"]))


def test_a_heartbeat_goes_stale() -> None:
    beat = health.Heartbeat(max_age=0.0)
    assert not beat.fresh()
    assert health.Heartbeat(max_age=60).fresh()
