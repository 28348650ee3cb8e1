"""The controller's pass loop: what it keeps between passes is dropped once the API server's
view shows it, also in a pass with nothing left to schedule."""

from __future__ import annotations

import asyncio
import datetime

from kubenova_api.resources import Server
from kubenova_operator import binder, binding, cluster
from kubenova_operator.scheduling import claims, hosts
from kubenova_operator.settings import ControllerSettings
from tests.fakes import FakeKube


def _server(uid: str, node: str | None) -> Server:
    return Server.parse(
        {
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"flavorRef": "f", "imageRef": "i"},
            "status": {"nodeName": node} if node else {},
        }
    )


def _snapshot(known: list[Server], pending: list[Server]) -> binder.Snapshot:
    index = cluster.Cluster()
    index.sync({s.uid: cluster.ServerSummary.of(s) for s in known})
    view = binding.ClusterView(flavors={}, images={}, hypervisors={}, cluster=index)
    return binder.Snapshot(view=view, pending=pending)


def test_the_last_bindings_claims_are_settled_when_nothing_is_pending_any_more() -> None:
    b = binder.Binder(ControllerSettings(), FakeKube())  # type: ignore[arg-type]
    room = hosts.Resources(1, 512, 1)
    for uid in ("seen", "gone", "in-flight"):
        b.claims.assume(claims.Claim(uid, "h1", room, namespace="ns"))
    # "seen" came back bound where it was claimed and "gone" was deleted: dropped, though
    # nothing is pending (no scheduling pass runs). "in-flight" is known, its binding not
    # back yet: kept.
    asyncio.run(b.one_pass(_snapshot([_server("seen", "h1"), _server("in-flight", None)], [])))
    assert {c.uid for c in b.claims.assumed_claims()} == {"in-flight"}
    assert b.claims.per_host() == {"h1": room}
    # A Server only the pending index has (not folded into the cluster yet) is alive too.
    b.claims.assume(claims.Claim("waiting", "h1", room, namespace="ns"))
    asyncio.run(b.one_pass(_snapshot([], [_server("waiting", None)])))
    assert {c.uid for c in b.claims.assumed_claims()} == {"waiting"}
    b.close()


def test_servers_made_in_the_same_second_are_decided_in_the_order_they_came() -> None:
    """creationTimestamp has a resolution of a second: within one, the order the watch
    delivered them in (the order they were made in) decides, not their names."""

    def made(name: str, second: int) -> Server:
        server = _server(name, None)
        server.metadata.creationTimestamp = datetime.datetime(
            2026, 12, 3, 22, 0, second, tzinfo=datetime.UTC
        )
        return server

    came = [made("later", 1), made("some-2", 5), made("by-kubectl", 5), made("earlier", 0)]
    ordered = sorted(came, key=binder._creation_order)
    assert [s.name for s in ordered] == ["earlier", "later", "some-2", "by-kubectl"]
