"""The OpenStack facade's decisions that need no services: microversion negotiation, issued
tokens, a server's Nova state from its spec and status, and the response shapes per
microversion (checked against the key sets of Nova's API reference)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from kubenova_api.resources import Server, ServerStatus
from kubenova_openstack import auth, microversion
from kubenova_openstack import image as glance
from kubenova_openstack.compute import bodies, hosts, state, views
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


def server(
    spec: dict[str, Any], status: dict[str, Any], generation: int = 1, observed: int | None = 1
) -> Server:
    return Server.parse(
        {
            "metadata": {"name": "s", "namespace": "p", "uid": "u", "generation": generation},
            "spec": {"flavorRef": "f", "imageRef": "i", **spec},
            "status": {"nodeName": "host-a", "observedGeneration": observed, **status},
        }
    )


T1 = "2026-11-29T21:00:00.000000Z"


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
        ({"rebootRequestedAt": T1}, "ACTIVE", ("REBOOT", "active", "rebooting")),
        (
            {"rebootRequestedAt": T1, "rebootType": "Hard"},
            "ACTIVE",
            ("HARD_REBOOT", "active", "rebooting_hard"),
        ),
        (
            {"rebuildRequestedAt": T1, "imageRef": "j"},
            "ACTIVE",
            ("REBUILD", "active", "rebuilding"),
        ),
        (
            {"rebuildRequestedAt": T1, "powerState": "Stopped"},
            "SHUTOFF",
            ("REBUILD", "stopped", "rebuilding"),
        ),
        ({}, "MIGRATING", ("MIGRATING", "active", "migrating")),
        ({}, "BUILD", ("BUILD", "building", "spawning")),
        ({}, "ERROR", ("ERROR", "error", None)),
        ({"flavorRef": "bigger"}, "ACTIVE", ("RESIZE", "active", "resize_prep")),
    ],
)
def test_task_state_stays_until_the_host_has_done_it(
    spec: dict[str, Any], phase: str, expected: tuple[str, str, str | None]
) -> None:
    status = {"phase": phase, "flavor": {"name": "f", "vcpus": 1, "memoryMiB": 64, "diskGiB": 1}}
    nova = state.of(server(spec, status))
    assert (nova.status, nova.vm_state, nova.task_state) == expected


def test_unbound_and_deleting_servers() -> None:
    unbound = server({}, {"nodeName": None})
    assert state.of(unbound).task_state == "scheduling"
    deleting = server({}, {"phase": "ACTIVE"})
    deleting.metadata.deletionTimestamp = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert state.of(deleting).task_state == "deleting"
    assert state.of(server({}, {"phase": "ACTIVE"}), verify_resize=True).status == "VERIFY_RESIZE"


def test_a_server_no_host_can_take_is_error_with_the_reason_as_nova_shows_it() -> None:
    """Where Nova gives up (NoValidHost) the controller keeps trying; the facade shows ERROR
    with the reason as the fault while the controller says it is stuck (Stalled=True for this
    generation), so that a client waiting for ACTIVE stops. Before the controller has looked
    at this generation, or while it is only waiting (not Stalled), it is BUILD / scheduling."""
    when = "2026-12-03T15:00:00Z"
    why = "No valid host was found among 1 hosts: AvailabilityZoneFilter rejected 1"
    conds = [
        {"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": why,
         "lastTransitionTime": when, "observedGeneration": 2},
        {"type": "Stalled", "status": "True", "reason": "Unschedulable", "message": why,
         "lastTransitionTime": when, "observedGeneration": 2},
    ]  # fmt: skip
    stuck = server({}, {"nodeName": None, "conditions": conds}, generation=2)
    nova = state.of(stuck)
    assert (nova.status, nova.vm_state, nova.task_state) == ("ERROR", "error", None)
    got = state.fault(stuck)
    assert got is not None and got[0] == f"Unschedulable: {why}" and got[1] == why, got
    assert got[2] is not None and got[2].startswith("2026-12-03T15:00:00")
    # A spec changed since (generation 3): the controller has not looked yet.
    assert state.of(
        server({}, {"nodeName": None, "conditions": conds}, generation=3)
    ).task_state == ("scheduling")
    # Waiting, not stuck (e.g. a Network that is not Ready yet).
    waiting = [dict(conds[0], reason="NetworkNotReady"), dict(conds[1], status="False")]
    shown = state.of(server({}, {"nodeName": None, "conditions": waiting}, generation=2))
    assert (shown.status, shown.task_state) == ("BUILD", "scheduling")
    assert state.fault(server({}, {"nodeName": None, "conditions": waiting}, generation=2)) is None
    # Bound after all: the binding is what counts.
    bound = server({}, {"nodeName": "host-a", "phase": "BUILD", "conditions": conds}, generation=2)
    assert state.of(bound).status == "BUILD"


def test_addresses_are_shown_per_network_as_nova_does() -> None:
    status = ServerStatus.model_validate({"addresses": [
        {"network": "blue", "kind": "Network", "ip": "10.0.0.5", "mac": "fa:16:3e:00:00:05"},
        {"network": "lan", "kind": "ProviderNetwork", "ip": "10.1.0.7", "mac": "fa:16:3e:00:00:07"},
    ]})  # fmt: skip
    assert views.addresses(status) == {
        "blue": [{"version": 4, "addr": "10.0.0.5", "OS-EXT-IPS:type": "fixed",
                  "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:05"}],
        "lan": [{"version": 4, "addr": "10.1.0.7", "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:07"}],
    }  # fmt: skip
    assert views.addresses(ServerStatus()) == {}


def test_a_reboot_is_done_when_the_agent_saw_that_instant_however_spelled() -> None:
    """The facade writes microseconds; the agent writes back what pydantic prints (no
    fraction for a whole second): the same instant, so no task left."""
    done = server({"rebootRequestedAt": T1}, {"phase": "ACTIVE"})
    done.status.observedRebootRequestedAt = dt.datetime(2026, 11, 29, 21, 0, tzinfo=dt.UTC)
    assert state.of(done).task_state is None
    older = server({"rebootRequestedAt": T1}, {"phase": "ACTIVE"})
    older.status.observedRebootRequestedAt = dt.datetime(2026, 11, 29, 20, 0, tzinfo=dt.UTC)
    assert state.of(older).task_state == "rebooting"


def _cond(type_: str, status: str, reason: str, generation: int) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": "",
        "lastTransitionTime": "2026-11-29T21:00:00Z",
        "observedGeneration": generation,
    }


def test_what_the_agent_will_not_do_is_no_task() -> None:
    # Refused for this generation (pause a stopped server): the phase, no task.
    refused = server(
        {"powerState": "Paused"},
        {"phase": "SHUTOFF", "conditions": [_cond("Converged", "False", "ActionNotAllowed", 1)]},
    )
    assert (state.of(refused).status, state.of(refused).task_state) == ("SHUTOFF", None)
    # ... but refused for an older generation says nothing of the new request.
    refused_before = server(
        {"powerState": "Paused"},
        {"phase": "ACTIVE", "conditions": [_cond("Converged", "False", "ActionNotAllowed", 1)]},
        generation=2,
    )
    assert state.of(refused_before).task_state == "pausing"
    # Off by itself, kept off by its restart policy: SHUTOFF / stopped, no task, and a
    # start asks for one (os-start then writes a hard reboot request).
    off = server(
        {"restartPolicy": "Never"},
        {
            "phase": "SHUTOFF",
            "conditions": [
                _cond("Converged", "True", "AsDeclared", 1),
                _cond("Ready", "False", "Shutdown", 1),
            ],
        },
    )
    assert (state.of(off).status, state.of(off).task_state) == ("SHUTOFF", None)
    assert state.stays_off(off)
    # The same, but the agent has not seen the spec that asks for Running: a task.
    unseen = server(
        {},
        {
            "phase": "SHUTOFF",
            "conditions": [
                _cond("Converged", "True", "AsDeclared", 1),
                _cond("Ready", "False", "Shutdown", 1),
            ],
        },
        generation=2,
        observed=1,
    )
    assert state.of(unseen).task_state == "powering-on" and not state.stays_off(unseen)


def test_a_rebuild_is_done_when_the_agent_saw_that_request() -> None:
    done = server({"rebuildRequestedAt": T1, "imageRef": "j"}, {"phase": "ACTIVE"})
    done.status.observedRebuildRequestedAt = dt.datetime(2026, 11, 29, 21, 0, tzinfo=dt.UTC)
    assert (state.of(done).status, state.of(done).task_state) == ("ACTIVE", None)


def test_image_properties_are_top_level_keys_of_the_glance_image() -> None:
    """Glance shows an image's additional properties beside its core fields; Nova's image
    proxy shows them in ``metadata``."""
    body = {
        "metadata": {"name": "debian-uefi", "uid": "9b1c"},
        "spec": {
            "source": {"disk": {"url": "http://i.example/d.qcow2", "sha256": "a" * 64}},
            "properties": {"hw_firmware_type": "uefi", "hw_machine_type": "q35",
                           "os_secure_boot": "required"},
        },
    }  # fmt: skip
    shown = glance.view(body)
    assert shown["hw_firmware_type"] == "uefi" and shown["hw_machine_type"] == "q35"
    assert shown["os_secure_boot"] == "required" and "hw_disk_bus" not in shown
    assert shown["id"] == "9b1c" and shown["disk_format"] == "qcow2"
    assert glance.properties({"source": {}}) == {}


def test_a_quota_set_body_is_checked_as_novas_schema_checks_it() -> None:
    """Numbers or strings of digits, -1 or more; only the quotas of the microversion;
    ``force`` taken and left out; the 400 names the quota with Nova's wording."""
    keys = ["cores", "instances", "ram", "key_pairs"]
    asked = bodies.quota_set({"quota_set": {"cores": "5", "ram": -1, "force": "true"}}, keys)
    assert asked == {"cores": 5, "ram": -1}
    for body, words in (
        ({"cores": "many"}, "field/attribute cores. Value: 'many'."),
        ({"cores": -2}, "field/attribute cores. Value: -2. -2 is less than the minimum of -1"),
        ({"cores": "-2"}, "-2 is less than the minimum of -1"),
        ({"cores": True}, "field/attribute cores. Value: True."),
        ({"cores": 2**31}, "less than or equal to 2147483647"),
        ({"fixed_ips": 5}, "Additional properties are not allowed ('fixed_ips' was unexpected)"),
        ({"force": "maybe"}, "field/attribute force."),
    ):
        with pytest.raises(Fault) as err:
            bodies.quota_set({"quota_set": body}, keys)
        assert err.value.status == 400 and words in err.value.message, (body, err.value.message)
    with pytest.raises(Fault, match=r"quota_set\. 'quota_set' is required"):
        bodies.quota_set({}, keys)


def test_a_hypervisors_uptime_reads_as_uptime_begins() -> None:
    now = dt.datetime(2026, 12, 3, 21, 4, 5, tzinfo=dt.UTC)

    def booted(**ago: float) -> dict[str, Any]:
        return {"status": {"bootTime": (now - dt.timedelta(**ago)).isoformat()}}

    assert hosts._uptime(booted(minutes=12, seconds=30), now) == "21:04:05 up 12 min"
    assert hosts._uptime(booted(hours=4, minutes=2), now) == "21:04:05 up  4:02"
    assert hosts._uptime(booted(days=1, minutes=5), now) == "21:04:05 up 1 day, 5 min"
    assert hosts._uptime(booted(days=93, hours=18, minutes=25), now) == (
        "21:04:05 up 93 days, 18:25"
    )
    assert hosts._uptime({"status": {}}, now) is None, "not reported: no uptime"


def test_a_resize_the_controller_could_not_do_is_reverted_as_nova_does() -> None:
    import json  # noqa: PLC0415

    from kubenova_api.resources import ServerMigration  # noqa: PLC0415
    from kubenova_openstack.compute import actions, servers  # noqa: PLC0415

    verify = {"kind": "resize", "fromFlavor": "small", "fromHost": "a", "restart": True}
    server = Server.parse(
        {
            "metadata": {
                "name": "web", "uid": "u1", "generation": 2,
                "annotations": {actions.VERIFY: json.dumps(verify)},
            },
            "spec": {"flavorRef": "big", "imageRef": "img", "powerState": "Stopped"},
            "status": {"nodeName": "a", "phase": "SHUTOFF", "flavor": {
                "name": "small", "vcpus": 1, "memoryMiB": 64, "diskGiB": 1}},
        }
    )  # fmt: skip

    def smig(name: str, phase: str, reason: str | None = None) -> ServerMigration:
        return ServerMigration.parse(
            {
                "metadata": {"name": name},
                "spec": {"serverRef": "web", "flavorRef": "big"},
                "status": {"phase": phase, "reason": reason, "serverUID": "u1"},
            }
        )

    refused = smig("mine", "Failed", "FlavorNotDeclared")
    assert servers.move_task(server, []) == "resize_migrating"
    assert servers.move_task(server, [refused]) == "resize_migrating", "no attempt yet"
    failed = smig("web-resize-1", "Failed", "NoValidHost")
    assert servers.move_task(server, [refused, failed]) == "resize_reverting"
    running = smig("web-resize-2", "Running")
    assert servers.move_task(server, [failed, running]) == "migrating"
    # A flavorRef changed with kubectl: no RESIZE for ever once its attempt failed.
    server.metadata.annotations.pop(actions.VERIFY)
    assert servers.move_task(server, [refused]) is None
    assert servers.move_task(server, [failed]) == "resize_failed"
    look = views.Lookups(flavors={}, images={}, hypervisors=None, admin=False)
    assert views.nova_state(server, look).status == "RESIZE"
    look.resize_failed.add("u1")
    failed_state = views.nova_state(server, look)
    assert (failed_state.status, failed_state.task_state) == ("SHUTOFF", None)
