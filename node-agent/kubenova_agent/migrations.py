"""The agent's part in moving Servers (Nova's ``pre_live_migration`` / ``live_migration`` /
``rollback_live_migration_at_destination``), driven by the ServerMigrations that name this
host as their source or their target.

This module watches those ServerMigrations (server-side field selectors on
``status.sourceNode`` and ``status.targetNode``), hands each to its role —
:mod:`kubenova_agent.migration_source` or :mod:`kubenova_agent.migration_target` — and answers
the Server reconciler's questions: is this guest moving away (leave it alone), is it arriving
(do not sweep it as an orphan)?

Each role writes only its own part of the status (``source`` + ``progress``, or ``target``)
under the agent's field manager; the controller owns the phase."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubenova_agent import (
    driver,
    informer,
    migration_source,
    migration_status,
    migration_target,
    reconcile,
    workqueue,
)
from kubenova_api import common, constants, kube
from kubenova_api.resources import (
    MigrationPhase,
    MigrationSourceReport,
    Server,
    ServerMigration,
    SourceStep,
)

log = logging.getLogger(__name__)

SOURCE, TARGET = "source", "target"
Key = tuple[str, str, str]
"""(role, namespace, name)"""


class MigrationAgent:
    """Both roles of this host, their ServerMigration informers and one work queue."""

    def __init__(
        self,
        deps: reconcile.Deps,
        k: kube.Kube,
        moves: driver.Migrations,
        requeue_server: Callable[[str], None],
        watches: informer.Watches | None = None,
    ) -> None:
        self.deps = deps
        self.host = deps.settings.host_name
        self.queue: workqueue.WorkQueue[Key] = workqueue.WorkQueue()
        watches = watches or informer.OwnWatches(k)
        self.as_source = watches.hosted(
            ServerMigration,
            self.host,
            lambda key: self.queue.add((SOURCE, *key)),
            constants.SOURCE_FIELD,
        )
        self.as_target = watches.hosted(
            ServerMigration,
            self.host,
            lambda key: self.queue.add((TARGET, *key)),
            constants.TARGET_FIELD,
        )
        reports = migration_status.Reports(k)
        self.source = migration_source.Source(deps, k, moves, reports, requeue_server, self._again)
        self.target = migration_target.Target(deps, k, moves, reports)

    def _again(self, smig: ServerMigration, delay: float = 0.0) -> None:
        self.queue.add((SOURCE, smig.namespace or "", smig.name), delay)

    # ------------------------------------------------------------------ queries
    def holds(self, server_uid: str, server: Server | None = None) -> str | None:
        """Why the Server reconciler must leave this guest alone (it is moving away), or None.
        ``server``, the copy being reconciled, tells whether it came back here since."""
        hold = self._hold(server_uid, server)
        return hold[0] if hold is not None else None

    def moved_away(self, server_uid: str, server: Server | None = None) -> bool:
        """Whether the guest left this host by a migration the controller has not yet turned
        into a rebinding: its disks may be the target's now (shared), so deleting the Server
        is the target's job once it is bound there."""
        hold = self._hold(server_uid, server)
        return hold is not None and hold[1]

    def _hold(self, server_uid: str, server: Server | None) -> tuple[str, bool] | None:
        """(why, whether the guest has left already) while a migration from here owns it."""
        job = self.source.job_of(server_uid)
        if job is not None:
            return f"live-migrating to {job.target}", False
        for smig in self.as_source.items():
            status = smig.status
            if status.serverUID != server_uid or self._came_back(smig, server):
                continue
            step = (status.source or MigrationSourceReport()).step
            if smig.phase is MigrationPhase.Running and step not in (
                SourceStep.Succeeded,
                SourceStep.Failed,
            ):
                return f"migrating to {status.targetNode}", False
            if smig.phase is MigrationPhase.Succeeded or step is SourceStep.Succeeded:
                # Moved away: hold until the rebinding takes the Server from this host —
                # unless the guest runs here (it came back later, or never left).
                guest = self.deps.guests.get(server_uid)
                if guest is None or not guest.alive:
                    return f"migrated to {status.targetNode}", True
        return None

    def _came_back(self, smig: ServerMigration, server: Server | None) -> bool:
        """Whether the Server left by ``smig`` (Succeeded: the controller has rebound it to the
        target) has been bound to this host again since, so that ``smig`` holds it no more.

        A Succeeded migration holds the Server because the copy being reconciled may still be
        the one from before the rebinding (bound here, the guest gone): acting on it would
        start a second guest on disks that may be shared. A copy bound here again after the
        move is not that: the Server came back by a later migration to this host (a cold move
        back, a resize that picked this host), or by an evacuation that bound it here after
        the target died (its ``Scheduled`` condition turned True after ``smig`` ended). Held
        for good instead, such a Server was never built here and could not be deleted."""
        ended = smig.status.completedAt
        if smig.phase is not MigrationPhase.Succeeded or ended is None:
            return False
        uid = smig.status.serverUID
        for back in self.as_target.items():
            started = back.status.startedAt
            if back.status.serverUID == uid and started is not None and started >= ended:
                return True
        if server is None:
            return False
        scheduled = common.get_condition(server.status.conditions, "Scheduled")
        return (
            scheduled is not None
            and scheduled.status == "True"
            and scheduled.lastTransitionTime is not None
            and scheduled.lastTransitionTime > ended
        )

    def incoming(self, server_uid: str) -> bool:
        """Whether a guest with this UUID is (or just was) migrating to this host."""
        for smig in self.as_target.items():
            status = smig.status
            if status.serverUID != server_uid:
                continue
            if smig.phase in (
                MigrationPhase.PreChecking,
                MigrationPhase.Preparing,
                MigrationPhase.Running,
            ):
                return True
            if smig.phase is MigrationPhase.Succeeded and migration_status.recent(
                status.completedAt
            ):
                return True
        return self.target.prepared_here(server_uid)

    # ------------------------------------------------------------------ running
    def work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                role, namespace, name = key
                if role == SOURCE:
                    smig = self.as_source.get((namespace, name))
                    if smig is not None:
                        self.source.reconcile(smig)
                else:
                    again = self.target.reconcile(
                        (namespace, name), self.as_target.get((namespace, name))
                    )
                    if again is not None:
                        self.queue.add(key, again)
                self.queue.forget(key)
            except Exception as exc:
                delay = self.queue.backoff(key)
                log.warning("migration %s failed a step (%s); again in %.1fs", key, exc, delay)
            finally:
                self.queue.done(key)

    def stop(self) -> None:
        self.as_source.stop()
        self.as_target.stop()
        self.queue.close()
