"""The OpenStack facade's decisions that need no services: microversion negotiation, issued
tokens, a server's Nova state from its spec and status, and the response shapes per
microversion (checked against the key sets of Nova's API reference)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubenova_openstack import auth, microversion
from kubenova_openstack.compute import state
from kubenova_openstack.faults import Fault


def test_microversions_are_negotiated_as_nova_does() -> None:
    v = microversion.requested
    assert v([], []) == microversion.Version(2, 1)
    assert v(["compute 2.60"], []) == microversion.Version(2, 60)
    assert v([], ["2.53"]) == microversion.Version(2, 53)
    assert v(["compute 2.60"], ["2.10"]) == microversion.Version(2, 60)  # the new header wins
    assert v(["image 2.5, compute 2.42"], []) == microversion.Version(2, 42)
    assert v(["Compute latest"], []) == microversion.MAX
    assert v(["image 2.5"], ["2.20"]) == microversion.Version(2, 20)
    with pytest.raises(Fault) as bad:
        v(["compute 2.x"], [])
    assert bad.value.status == 400
    for unsupported in ("2.0", "2.89", "3.0"):
        with pytest.raises(Fault) as out:
            v([f"compute {unsupported}"], [])
        assert out.value.status == 406, unsupported


def test_issued_tokens_verify_and_forgeries_do_not() -> None:
    tokens = auth.Tokens(b"k" * 32, ttl=60)
    text, token = tokens.issue("alice", ("tenants",), "demo", ("password",), "cloud-admin")
    back = tokens.verify(text)
    assert back == token and back.caller().user == "alice" and back.project == "demo"
    body, _, sig = text.rpartition(".")
    for forged in (body + "." + sig[:-2] + "AA", body.replace("kn1.", "kn1.e") + "." + sig):
        with pytest.raises(Fault) as out:
            tokens.verify(forged)
        assert out.value.status == 401
    with pytest.raises(Fault):
        auth.Tokens(b"x" * 32, ttl=60).verify(text)  # another key
    expired, _ = auth.Tokens(b"k" * 32, ttl=-1).issue("a", (), None, ("token",))
    with pytest.raises(Fault, match="expired"):
        tokens.verify(expired)
    assert token.expires > time.time()


def server(spec: dict[str, Any], status: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "namespace": "p", "uid": "u", "generation": generation},
        "spec": {"flavorRef": "f", "imageRef": "i", **spec},
        "status": {"nodeName": "host-a", **status},
    }


@pytest.mark.parametrize(
    ("spec", "phase", "expected"),
    [
        ({}, "ACTIVE", ("ACTIVE", "active", None)),
        ({"powerState": "Stopped"}, "ACTIVE", ("ACTIVE", "active", "powering-off")),
        ({"powerState": "Stopped"}, "SHUTOFF", ("SHUTOFF", "stopped", None)),
        ({}, "SHUTOFF", ("SHUTOFF", "stopped", "powering-on")),
        ({"powerState": "Suspended"}, "ACTIVE", ("ACTIVE", "active", "suspending")),
        ({}, "SUSPENDED", ("SUSPENDED", "suspended", "resuming")),
        ({"powerState": "Paused"}, "ACTIVE", ("ACTIVE", "active", "pausing")),
        ({}, "PAUSED", ("PAUSED", "paused", "unpausing")),
        ({"rescue": {}}, "ACTIVE", ("ACTIVE", "active", "rescuing")),
        ({"rescue": {}}, "RESCUE", ("RESCUE", "rescued", None)),
        ({}, "RESCUE", ("RESCUE", "rescued", "unrescuing")),
        ({"rebootRequestedAt": "t1"}, "ACTIVE", ("REBOOT", "active", "rebooting")),
        (
            {"rebootRequestedAt": "t1", "rebootType": "Hard"},
            "ACTIVE",
            ("HARD_REBOOT", "active", "rebooting_hard"),
        ),
        ({}, "MIGRATING", ("MIGRATING", "active", "migrating")),
        ({}, "BUILD", ("BUILD", "building", "spawning")),
        ({}, "ERROR", ("ERROR", "error", None)),
    ],
)
def test_task_state_stays_until_the_host_has_done_it(
    spec: dict[str, Any], phase: str, expected: tuple[str, str, str | None]
) -> None:
    nova = state.of(server(spec, {"phase": phase}))
    assert (nova.status, nova.vm_state, nova.task_state) == expected


def test_unbound_and_deleting_servers() -> None:
    unbound = server({}, {})
    unbound["status"] = {}
    assert state.of(unbound).task_state == "scheduling"
    deleting = server({}, {"phase": "ACTIVE"})
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert state.of(deleting).task_state == "deleting"
    done = server({"rebootRequestedAt": "t1"}, {"phase": "ACTIVE"})
    done["status"]["observedRebootRequestedAt"] = "t1"
    assert state.of(done).task_state is None
    assert state.of(server({}, {"phase": "ACTIVE"}), verify_resize=True).status == "VERIFY_RESIZE"
