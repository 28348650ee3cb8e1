"""The controller's migration decisions and the agent's progress figures: pure functions over
typed data (the moves themselves are tested end to end in tests/e2e/test_migration.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubenova_agent.driver import JobStats
from kubenova_agent.migration_status import progress_of
from kubenova_api import common
from kubenova_api.resources import (
    Hypervisor,
    ImageSpec,
    MigrationPhase,
    Outcome,
    Phase,
    Server,
    ServerMigration,
    ServerMigrationStatus,
    ServerStatus,
)
from kubenova_operator import binding, cluster, liveness, migrations, resize
from kubenova_operator.scheduling import claims, hosts
from kubenova_operator.settings import ControllerSettings
from tests.fakes import FakeKube

FLAVOR = hosts.Resources(1, 512, 1)
IMAGE = ImageSpec.model_validate(
    {"source": {"disk": {"url": "http://images.example/d", "sha256": "0" * 64}}}
)


def _hv(name: str, evacuate: bool = False, disabled: bool = False, mem: int = 4096) -> Hypervisor:
    return Hypervisor.parse(
        {
            "metadata": {"name": name},
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
    )


def _server(
    name: str = "web", node: str = "a", phase: str = "ACTIVE", flavor_ref: str = "small"
) -> cluster.ServerSummary:
    return cluster.ServerSummary(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        node=node,
        phase=Phase(phase),
        flavor=FLAVOR,
        flavor_name="small",
        flavor_ref=flavor_ref,
        image_ref="img",
        group_ref=None,
        zone=None,
        deleting=False,
    )


def _smig(name: str = "move", server: str = "web", **status: Any) -> ServerMigration:
    return ServerMigration.parse(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": f"m-{name}",
                "resourceVersion": "1",
            },
            "spec": {"serverRef": server, **status.pop("spec", {})},
            "status": status,
        }
    )


def _precheck(
    smig: ServerMigration, server: cluster.ServerSummary | None, **hypervisors: Hypervisor
) -> migrations.Accepted | migrations.End:
    cfg = ControllerSettings()
    known = cluster.Cluster()
    known.sync({server.uid: server} if server is not None else {})
    hvs = hypervisors or {"a": _hv("a"), "b": _hv("b"), "c": _hv("c", mem=1024)}
    view = binding.ClusterView(
        flavors={},
        images={"img": IMAGE},
        hypervisors=hvs,
        cluster=known,
    )
    assumed = claims.Claims()
    states = binding.host_states(view, assumed, cfg)
    ctx = migrations.Context(smig, server, view, states, assumed, cfg, (smig,))
    return migrations.precheck(ctx)


def test_the_scheduler_picks_a_target_other_than_the_source() -> None:
    verdict = _precheck(_smig(), _server())
    assert not isinstance(verdict, migrations.End)
    target, live, _flavor, message = verdict
    assert target == "b"  # c has less free memory; a is the source
    assert live and "picked by the scheduler" in message
    cold = _precheck(_smig(), _server(phase="SHUTOFF"))
    assert not isinstance(cold, migrations.End) and not cold[1]


def _reason(verdict: migrations.Accepted | migrations.End) -> str:
    assert isinstance(verdict, migrations.End), verdict
    return verdict.outcome.reason


def test_refusals_say_why() -> None:
    same = _precheck(_smig(spec={"targetNode": "a"}), _server())
    assert same == migrations.failed("SameHost", "the Server is on a already")
    assert _reason(_precheck(_smig(), _server(phase="SUSPENDED"))) == "NotMovable"
    resize = _smig(spec={"flavorRef": "big"})
    assert _reason(_precheck(resize, _server(flavor_ref="big"))) == "ResizeNeedsStop"
    nosuch = _precheck(resize, _server(phase="SHUTOFF", flavor_ref="big"))
    assert _reason(nosuch) == "FlavorNotFound"
    assert _reason(_precheck(_smig(), None)) == "ServerNotFound"
    assert _reason(_precheck(_smig(spec={"targetNode": "zz"}), _server())) == "TargetNotFound"


def test_a_migration_resizes_only_to_the_flavor_the_server_declares() -> None:
    """A resize is declared on the Server: a ServerMigration naming another flavor would be
    undone at once by the resize back to the Server's spec.flavorRef, so it is refused."""
    undeclared = _precheck(_smig(spec={"flavorRef": "big"}), _server(phase="SHUTOFF"))
    assert isinstance(undeclared, migrations.End)
    assert undeclared.outcome.reason == "FlavorNotDeclared"
    assert "'big' is not the Server's flavorRef ('small')" in undeclared.outcome.message
    # Naming the flavor it runs with is no resize: it moves live.
    same = _precheck(_smig(spec={"flavorRef": "small"}), _server())
    assert not isinstance(same, migrations.End) and same[1]


def test_a_draining_or_full_target_is_no_valid_host() -> None:
    verdict = _precheck(
        _smig(spec={"targetNode": "b"}), _server(), a=_hv("a"), b=_hv("b", evacuate=True)
    )
    assert isinstance(verdict, migrations.End)
    assert verdict.outcome.reason == "NoValidHost"
    assert "ComputeFilter rejected 1" in verdict.outcome.message
    full = _precheck(_smig(), _server(), a=_hv("a"), b=_hv("b", mem=256))
    assert isinstance(full, migrations.End) and "RamFilter rejected 1" in full.outcome.message


def test_migrations_under_way_claim_room_on_their_target() -> None:
    servers = {("ns", "web"): _server(), ("ns", "db"): _server("db")}
    running = _smig(phase="Running", targetNode="b")
    finished = _smig("old", "db", phase="Succeeded", targetNode="b")
    found = migrations.target_claims([running, finished], servers.get)
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
    out = progress_of(stats).to_apply()
    assert out["percent"] == 75
    assert out["memoryIterations"] == 2 and "downtimeMs" not in out
    done = progress_of(JobStats(data_total=10, data_processed=10, downtime_ms=120)).to_apply()
    assert done["percent"] == 100 and done["downtimeMs"] == 120


def _kstatus(status: Any, generation: int = 1) -> str:
    """The verdict kstatus draws from observedGeneration and the abnormal-true conditions
    (checked against the library itself in tests/integration/test_gitops_status.py)."""
    if status.observedGeneration != generation:
        return "InProgress"
    for cond in status.conditions:
        if cond.status == "True" and cond.type in ("Reconciling", "Stalled"):
            return "InProgress" if cond.type == "Reconciling" else "Failed"
    return "Current"


def test_a_migration_is_in_progress_while_it_runs_then_current_or_failed() -> None:
    for phase in ("Pending", "PreChecking", "Preparing", "Running"):
        status = ServerMigrationStatus(phase=MigrationPhase(phase), observedGeneration=1)
        status.conditions = migrations.progress_conditions(status, 1)
        assert _kstatus(status) == "InProgress", phase
    aborting = ServerMigrationStatus(
        phase=MigrationPhase.Running,
        observedGeneration=1,
        abortRequested=Outcome(reason="Cancelled", message="deleted"),
    )
    aborting.conditions = migrations.progress_conditions(aborting, 1)
    assert [c.reason for c in aborting.conditions if c.type == "Reconciling"] == ["Aborting"]
    done = ServerMigrationStatus(phase=MigrationPhase.Succeeded, observedGeneration=1)
    done.conditions = migrations.progress_conditions(done, 1)
    assert _kstatus(done) == "Current"
    failed = ServerMigrationStatus(
        phase=MigrationPhase.Failed,
        observedGeneration=1,
        reason="MigrationUnsupported",
        message="the target refused",
    )
    failed.conditions = migrations.progress_conditions(failed, 1)
    assert _kstatus(failed) == "Failed"
    stalled = next(c for c in failed.conditions if c.type == "Stalled")
    assert (stalled.reason, stalled.message) == ("MigrationUnsupported", "the target refused")


def test_a_server_that_cannot_be_bound_is_stalled_one_that_waits_briefly_reconciling() -> None:
    server = Server.parse(
        {"metadata": {"name": "s", "generation": 3}, "spec": {"flavorRef": "f", "imageRef": "i"}}
    )
    for reason, verdict in (
        ("Unschedulable", "Failed"),
        ("FlavorNotFound", "Failed"),
        ("QuotaExceeded", "Failed"),
        ("NetworkNotReady", "InProgress"),
    ):
        out = binding.Outcome(None, reason, "why")
        status = ServerStatus(
            observedGeneration=3, conditions=binding.waiting_conditions(server, out, 3)
        )
        assert _kstatus(status, 3) == verdict, reason


def test_a_host_down_is_stalled_and_an_edited_host_is_observed() -> None:
    k = FakeKube()
    hv = _hv("a")
    hv.metadata.generation = 2
    k.put(hv)
    cfg = ControllerSettings()
    assert liveness.check_hosts({"a": hv}, cfg, k) == [("a", True)]
    written = k.get(Hypervisor, "a")
    assert written is not None and _kstatus(written.status, 2) == "Current"
    assert liveness.check_hosts({"a": written}, cfg, k) == [], "nothing new: no write"
    writes = len(k.writes)
    written.metadata.generation = 3  # an admin's edit: recorded, with no Event
    assert liveness.check_hosts({"a": written}, cfg, k) == []
    assert len(k.writes) == writes + 1
    edited = k.get(Hypervisor, "a")
    assert edited is not None and edited.status.observedGeneration == 3
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    edited.status.lastHeartbeatTime = old
    assert liveness.check_hosts({"a": edited}, cfg, k, heartbeats={}) == [("a", False)]
    down = k.get(Hypervisor, "a")
    assert down is not None and _kstatus(down.status, 3) == "Failed"
    up = common.get_condition(down.status.conditions, "Up")
    assert up is not None and "no heartbeat Lease kubenova-system/hypervisor-a seen" in up.message
    # A Lease renewed now brings the host back, whatever the status's own time says.
    now = dt.datetime.now(dt.UTC)
    assert liveness.check_hosts({"a": down}, cfg, k, heartbeats={"a": now}) == [("a", True)]


def test_a_refused_undeclared_flavor_is_no_resize_attempt() -> None:
    """One resize attempt per flavor, but a ServerMigration refused for naming a flavor before
    the Server declared it was no attempt: declaring that flavor then still resizes."""
    stopped = _server(phase="SHUTOFF", flavor_ref="big")
    refused = _smig("early", spec={"flavorRef": "big"}, phase="Failed", reason="FlavorNotDeclared")
    assert resize.wanted(stopped, [refused])
    tried = _smig("tried", spec={"flavorRef": "big"}, phase="Failed", reason="NoValidHost")
    assert not resize.wanted(stopped, [refused, tried]), "one attempt per flavor"
    moving = _smig("moving", phase="Running")
    assert not resize.wanted(stopped, [moving]), "a move under way first"
    assert not resize.wanted(_server(phase="SHUTOFF"), []), "it runs with what it declares"


def test_a_failed_resize_tells_the_server_why_and_how_to_try_again() -> None:
    """The Server asked for the resize (its flavorRef), so the Server says it failed: an
    Event with the reason, the flavor it keeps, and how to have it tried again."""
    k = FakeKube()
    server = _server(phase="SHUTOFF", flavor_ref="big")
    smig = _smig("web-resize-x", spec={"flavorRef": "big"})
    k.put(smig)
    known = cluster.Cluster()
    known.sync({server.uid: server})
    view = binding.ClusterView(
        flavors={}, images={"img": IMAGE}, hypervisors={"a": _hv("a"), "b": _hv("b")},
        cluster=known,
    )  # fmt: skip
    cfg = ControllerSettings()
    assumed = claims.Claims()
    migrations.Driver(cfg, k).step(smig, view, binding.host_states(view, assumed, cfg), assumed)
    on_server = [(r, m) for name, r, m in k.events if name == "web"]
    assert [r for r, _ in on_server] == ["ResizeFailed"], k.events
    message = on_server[0][1]
    assert "resize to big failed (FlavorNotFound: Flavor 'big' does not exist)" in message
    assert "it keeps small" in message and "Delete ServerMigration web-resize-x" in message
    # A plain move that fails before it began is the ServerMigration's own business.
    k.events.clear()
    plain = _smig("move", spec={"targetNode": "zz"})
    k.put(plain)
    migrations.Driver(cfg, k).step(plain, view, binding.host_states(view, assumed, cfg), assumed)
    assert [name for name, _, _ in k.events] == ["move"], k.events
