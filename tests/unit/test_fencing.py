"""Which Servers of an out-of-service host the controller releases or evacuates (pure
decisions; the whole path runs against a real API server in tests/integration/test_dead_host.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import Hypervisor, Phase, Server
from kubenova_operator import fencing
from kubenova_operator.cluster import Cluster, ServerSummary
from kubenova_operator.scheduling.hosts import Resources


def hv(name: str, out_of_service: bool) -> Hypervisor:
    return Hypervisor.parse({"metadata": {"name": name}, "spec": {"outOfService": out_of_service}})


def on(node: str | None, name: str, deleting: bool = False, held: bool = True) -> ServerSummary:
    return ServerSummary(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        node=node,
        phase=Phase.ACTIVE,
        flavor=Resources(1, 256, 1),
        flavor_name="m1",
        flavor_ref="m1",
        image_ref="img",
        group_ref=None,
        zone=None,
        deleting=deleting,
        held=held,
    )


def test_only_servers_of_a_marked_host_that_is_down_are_released_or_evacuated() -> None:
    servers = [
        on("dead", "deleted", deleting=True),
        on("dead", "running"),
        on("marked-but-up", "lucky"),
        on("down-unmarked", "waiting"),
        on("fine", "other"),
    ]
    cluster = Cluster()
    cluster.sync({s.uid: s for s in servers})
    hypervisors = {
        "dead": hv("dead", True),
        "marked-but-up": hv("marked-but-up", True),
        "down-unmarked": hv("down-unmarked", False),
        "fine": hv("fine", False),
    }
    up = {"dead": False, "marked-but-up": True, "down-unmarked": False, "fine": True}
    decided = fencing.plan(hypervisors, up, cluster)
    assert [(s.name, h) for s, h in decided.release] == [("deleted", "dead")]
    assert [(s.name, h) for s, h in decided.evacuate] == [("running", "dead")]
    assert decided.not_fenced == ("marked-but-up",), "a heartbeating host is not fenced"
    # A host the controller has not seen a heartbeat of is not up either.
    assert fencing.plan({"dead": hv("dead", True)}, {}, cluster).evacuate


def test_the_stranded_are_the_deleting_unbound_servers_that_still_hold_the_finalizer() -> None:
    cluster = Cluster()
    servers = [
        on(None, "deleted-unbound", deleting=True),
        on(None, "deleted-without-finalizer", deleting=True, held=False),
        on(None, "pending"),
        on("host", "deleted-bound", deleting=True),
    ]
    cluster.sync({s.uid: s for s in servers})
    assert [s.name for s in cluster.stranded()] == ["deleted-unbound"]
    # A binding lands on it: its agent tears it down now, not the controller.
    cluster.touch("uid-deleted-unbound")
    bound = dataclasses.replace(servers[0], node="host")
    cluster.sync({s.uid: s for s in [bound, *servers[1:]]})
    assert cluster.stranded() == []
    # The pending one is deleted; then it is gone.
    cluster.touch("uid-pending")
    deleted = dataclasses.replace(servers[2], deleting=True)
    cluster.sync({s.uid: s for s in [bound, servers[1], deleted, servers[3]]})
    assert [s.name for s in cluster.stranded()] == ["pending"]
    cluster.touch("uid-pending")
    cluster.sync({s.uid: s for s in [bound, servers[1], servers[3]]})
    assert cluster.stranded() == []


@dataclasses.dataclass
class ReleaseKube:
    """The two calls release_unbound makes: a GET and a JSON patch (recorded; the patch
    fails like the API server's when its resourceVersion test does)."""

    objects: dict[str, Server]
    patches: list[tuple[str, list[dict[str, Any]]]] = dataclasses.field(default_factory=list)
    moved_on: set[str] = dataclasses.field(default_factory=set)

    def get(self, kind: type[Server], name: str, namespace: str | None = None) -> Server | None:
        return self.objects.get(name)

    def json_patch(self, ref: ObjectRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        if ref.name in self.moved_on:
            raise ApiException(status=422, reason="the test operation failed")
        self.patches.append((ref.name, ops))
        return {}


def server(name: str, node: str | None = None, deleting: bool = True) -> Server:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "resourceVersion": "7",
        "finalizers": ["example.com/other", constants.FINALIZER_DOMAIN],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T18:00:00Z"
    status = {"nodeName": node} if node else {}
    spec = {"flavorRef": "m1", "imageRef": "img"}
    return Server.parse({"metadata": meta, "spec": spec, "status": status})


def test_release_unbound_removes_only_the_agents_finalizer_guarded_by_the_version() -> None:
    names = ("gone-meanwhile", "bound-meanwhile", "in-flight", "changing", "stranded")
    cluster = Cluster()
    cluster.sync({f"uid-{n}": on(None, n, deleting=True) for n in names})
    kube = ReleaseKube(
        objects={
            "bound-meanwhile": server("bound-meanwhile", node="host"),
            "in-flight": server("in-flight"),
            "changing": server("changing"),
            "stranded": server("stranded"),
        },
        moved_on={"changing"},
    )
    fence = fencing.Fencing(kube)  # type: ignore[arg-type]
    assert fence.release_unbound(cluster, lambda uid: uid == "uid-in-flight") == 1
    assert kube.patches == [
        (
            "stranded",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ],
        )
    ]


def test_release_unbound_lets_other_api_errors_through() -> None:
    cluster = Cluster()
    cluster.sync({"uid-s": on(None, "s", deleting=True)})

    class Failing(ReleaseKube):
        def json_patch(self, ref: ObjectRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
            raise ApiException(status=500, reason="etcd is gone")

    fence = fencing.Fencing(Failing({"s": server("s")}))  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        fence.release_unbound(cluster, lambda uid: False)
