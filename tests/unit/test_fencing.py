"""Which Servers of an out-of-service host the controller releases or evacuates (pure
decisions; the whole path runs against a real API server in tests/integration/test_dead_host.py)."""

from __future__ import annotations

from kubenova_api.resources import Hypervisor, Phase
from kubenova_operator import fencing
from kubenova_operator.cluster import Cluster, ServerSummary
from kubenova_operator.scheduling.hosts import Resources


def hv(name: str, out_of_service: bool) -> Hypervisor:
    return Hypervisor.parse({"metadata": {"name": name}, "spec": {"outOfService": out_of_service}})


def on(node: str, name: str, deleting: bool = False) -> ServerSummary:
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
    cluster.sync({s.uid: [s] for s in servers})
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
