"""Resizing a Server (Nova's resize): a bound Server whose ``spec.flavorRef`` no longer names
the flavor it runs with is moved by a cold migration with the new flavor once it is stopped —
one attempt per flavor; a running one is told (``ResizeWaitsForStop``) to stop first."""

from __future__ import annotations

import logging

from kubenova_api import kube
from kubenova_api.common import ObjectMeta
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import Phase, Server, ServerMigration, ServerMigrationSpec
from kubenova_operator.cluster import Cluster, ServerSummary
from kubenova_operator.migrations import NOT_DECLARED, moves

log = logging.getLogger(__name__)


def wanted(server: ServerSummary, migrations: list[ServerMigration]) -> bool:
    """Whether a resize migration should be made for ``server`` now: none was tried for this
    flavor, and none is moving it. A migration refused for naming a flavor the Server did not
    declare then was no attempt."""
    return server.wants_resize and not any(
        moves(m, server.namespace, server.name)
        and (
            m.active or (m.spec.flavorRef == server.flavor_ref and m.status.reason != NOT_DECLARED)
        )
        for m in migrations
    )


class Resizes:
    def __init__(self, k: kube.Kube) -> None:
        self.kube = k
        self._told: set[tuple[str, str]] = set()
        """Servers (and the flavor) told that their resize waits for a stop."""

    def run_pass(self, cluster: Cluster, migrations: list[ServerMigration]) -> None:
        """Only the Servers whose flavorRef changed are looked at (kept by the cluster)."""
        for server in cluster.resizing():
            if wanted(server, migrations):
                self.resize(server)

    def resize(self, server: ServerSummary) -> None:
        ref = ObjectRef.named(Server, server.name, server.namespace, server.uid)
        to = server.flavor_ref
        if server.phase is not Phase.SHUTOFF:
            key = (server.uid, to)
            if key not in self._told:
                self._told.add(key)
                self.kube.event(
                    ref,
                    "ResizeWaitsForStop",
                    f"resize to {to} happens once the server is stopped (powerState: Stopped)",
                )
            return
        smig = ServerMigration(
            metadata=ObjectMeta(
                generateName=f"{server.name[:40]}-resize-", namespace=server.namespace
            ),
            spec=ServerMigrationSpec(serverRef=server.name, flavorRef=to),
        )
        name = self.kube.create(smig)["metadata"]["name"]
        self.kube.event(ref, "Resizing", f"resize to {to}: ServerMigration {name}")
        log.info("resizing %s to %s (%s)", server.full_name, to, name)
