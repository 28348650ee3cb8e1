"""The agent's libvirt connection (libvirt's own test driver): one that is lost is opened
again at its next use, and the agent is told, since what changed meanwhile sent no
lifecycle event."""

from __future__ import annotations

from kubenova_agent.libvirt.host import Host


def test_a_lost_connection_is_opened_again_and_that_is_said_once() -> None:
    back: list[str] = []
    host = Host("test:///default", on_reconnect=lambda: back.append("back"))
    first = host.conn
    assert host.conn is first and back == [], "the first open is no reconnection"
    first.close()  # libvirtd went away
    again = host.conn
    assert again is not first and again.isAlive()
    assert again.getHostname()
    assert back == ["back"]
    assert host.conn is again and back == ["back"], "said once per reconnection"
    host.close()
