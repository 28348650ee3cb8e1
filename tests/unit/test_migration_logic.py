"""The controller's migration decisions and the agent's progress figures: pure functions over
plain data (the moves themselves are tested end to end in tests/e2e/test_migration.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubenova_agent.libvirt.migration import JobStats
from kubenova_agent.migrate import progress_of
from kubenova_operator import binding, migration
from kubenova_operator.scheduling import hosts
from kubenova_operator.settings import ControllerSettings

FLAVOR = {"vcpus": 1, "memoryMiB": 512, "diskGiB": 1}


def _hv(evacuate: bool = False, disabled: bool = False, mem: int = 4096) -> dict[str, Any]:
    return {
        "spec": {"evacuate": evacuate, "disabled": disabled},
        "status": {
            "lastHeartbeatTime": dt.datetime.now(dt.UTC).isoformat(),
            "conditions": [{"type": "Ready", "status": "True"}],
            "total": {"vcpus": 4, "memoryMiB": mem, "diskGiB": 100},
            "reserved": {"vcpus": 0, "memoryMiB": 0, "diskGiB": 0},
            "guestArchitectures": ["x86_64"],
            "virtType": "qemu",
        },
    }


def _server(name: str = "web", node: str = "a", phase: str = "ACTIVE") -> migration.ServerSummary:
    return migration.ServerSummary(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        node=node,
        phase=phase,
        flavor=FLAVOR,
        spec={"flavorRef": "small", "imageRef": "img"},
        deleting=False,
    )


def _smig(name: str = "move", server: str = "web", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"m-{name}", "resourceVersion": "1"},
        "spec": {"serverRef": server, **status.pop("spec", {})},
        "status": status,
    }


def _precheck(
    body: dict[str, Any], server: migration.ServerSummary | None, **hypervisors: Any
) -> tuple[str, str] | migration.Failure:
    cfg = ControllerSettings()
    view = binding.ClusterView(
        flavors={},
        images={"img": {"architecture": "x86_64"}},
        hypervisors=hypervisors or {"a": _hv(), "b": _hv(), "c": _hv(mem=1024)},
        bound=[],
        alive_uids=set(),
    )
    states = {h.name: h for h in binding.host_states(view, {}, cfg)}
    m = migration.Migrator(cfg, None, None)  # type: ignore[arg-type]
    return m.precheck(body, server, [body], view, states)


def test_the_scheduler_picks_a_target_other_than_the_source() -> None:
    verdict = _precheck(_smig(), _server())
    assert isinstance(verdict, migration.Accepted)
    assert verdict.target == "b"  # c has less free memory; a is the source
    assert verdict.live and "picked by the scheduler" in verdict.message
    cold = _precheck(_smig(), _server(phase="SHUTOFF"))
    assert isinstance(cold, migration.Accepted) and not cold.live


def test_refusals_say_why() -> None:
    same = _precheck(_smig(spec={"targetNode": "a"}), _server())
    assert same == migration.Failure("SameHost", "the Server is on a already")
    suspended = _precheck(_smig(), _server(phase="SUSPENDED"))
    assert isinstance(suspended, migration.Failure) and suspended.reason == "NotMovable"
    running = _precheck(_smig(spec={"flavorRef": "big"}), _server())
    assert isinstance(running, migration.Failure) and running.reason == "ResizeNeedsStop"
    nosuch = _precheck(_smig(spec={"flavorRef": "big"}), _server(phase="SHUTOFF"))
    assert isinstance(nosuch, migration.Failure) and nosuch.reason == "FlavorNotFound"
    gone = _precheck(_smig(), None)
    assert isinstance(gone, migration.Failure) and gone.reason == "ServerNotFound"
    unknown = _precheck(_smig(spec={"targetNode": "zz"}), _server())
    assert isinstance(unknown, migration.Failure) and unknown.reason == "TargetNotFound"


def test_a_draining_or_full_target_is_no_valid_host() -> None:
    verdict = _precheck(_smig(spec={"targetNode": "b"}), _server(), a=_hv(), b=_hv(evacuate=True))
    assert isinstance(verdict, migration.Failure)
    assert verdict.reason == "NoValidHost" and "ComputeFilter rejected 1" in verdict.message
    full = _precheck(_smig(), _server(), a=_hv(), b=_hv(mem=256))
    assert isinstance(full, migration.Failure) and "RamFilter rejected 1" in full.message


def test_migrations_under_way_claim_room_on_their_target() -> None:
    servers = {("ns", "web"): _server(), ("ns", "db"): _server("db")}
    running = _smig(phase="Running", targetNode="b")
    finished = _smig("old", "db", phase="Succeeded", targetNode="b")
    found = migration.target_claims([running, finished], servers)
    assert [(c.uid, c.host, c.resources) for c in found] == [
        ("uid-web/migration", "b", hosts.Resources(1, 512, 1))
    ]


def test_progress_figures() -> None:
    stats = JobStats(
        data_total=100 << 20,
        data_processed=80 << 20,
        data_remaining=25 << 20,
        memory_iterations=2,
        elapsed_ms=1500,
    )
    out = progress_of(stats)
    assert out["percent"] == 75
    assert out["memoryIterations"] == 2 and "downtimeMs" not in out
    done = progress_of(JobStats(data_total=10, data_processed=10, downtime_ms=120))
    assert done["percent"] == 100 and done["downtimeMs"] == 120
