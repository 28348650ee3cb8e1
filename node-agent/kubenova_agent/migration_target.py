"""The target host's part in a migration (Nova's ``check_can_live_migrate_destination``,
``pre_live_migration`` and ``rollback_live_migration_at_destination``).

Its report (``status.target``) moves through ordered steps
(:class:`~kubenova_api.resources.TargetStep`):

    Waiting → Checked → Prepared → Arrived          (or Refused; after a failure CleanedUp)

* **Checked**: the guest's CPU compared with what this host's hypervisor provides (libvirt's
  ``compareHypervisorCPU``), and the source's probe file looked for (seen: the instances folder
  is shared; not seen: the disks are copied). A failed check is **Refused**.
* **Prepared**: images fetched, disks and the config drive created, as for a new guest.
* **Arrived**: while the migration runs, the guest became a persistent, running domain here —
  how the controller learns where the guest is when the source host dies mid-move.
* **CleanedUp**: after a failure, nothing of the guest is left here (unless it is bound here).
"""

from __future__ import annotations

import logging
import pathlib
import threading

from kubenova_agent import driver, reconcile
from kubenova_agent.libvirt.domain_xml import VirtType
from kubenova_agent.migration_status import Own, Reports
from kubenova_api import constants, kube
from kubenova_api.kube import RetryLater
from kubenova_api.resources import (
    MigrationPhase,
    MigrationSourceReport,
    Server,
    ServerMigration,
    TargetStep,
)

log = logging.getLogger(__name__)

ARRIVAL_POLL = 2.0
"""Seconds between a target's looks for the arriving guest while the migration runs."""

Key = tuple[str, str]


class Target:
    def __init__(
        self,
        deps: reconcile.Deps,
        k: kube.Kube,
        moves: driver.Migrations,
        reports: Reports,
    ) -> None:
        self.deps = deps
        self.kube = k
        self.moves = moves
        self.reports = reports
        self.host = deps.settings.host_name
        self._lock = threading.Lock()
        self._prepared: dict[Key, tuple[str, bool]] = {}
        """(namespace, name) -> (server UID, shared storage) of migrations prepared here."""

    def prepared_here(self, server_uid: str) -> bool:
        with self._lock:
            return any(uid == server_uid for uid, _ in self._prepared.values())

    def reconcile(self, key: Key, smig: ServerMigration | None) -> float | None:
        """One step of the target's part; returns when to look again (None: on a change)."""
        if smig is None:  # deleted: remove what a migration prepared here
            with self._lock:
                record = self._prepared.pop(key, None)
            if record is not None:
                self._clean(*record)
            return None
        server_uid = smig.status.serverUID
        if not server_uid:
            return None
        own = self.reports.of(smig)
        step = own.target.step
        phase = smig.phase
        if phase is MigrationPhase.Succeeded:
            with self._lock:
                self._prepared.pop(key, None)
            self.reports.forget(smig.uid)
            return None
        if phase is MigrationPhase.Failed:
            with self._lock:
                self._prepared.pop(key, None)
            if step is not TargetStep.CleanedUp:
                self._clean(server_uid, bool(own.target.sharedStorage))
                own.target = own.target.at(TargetStep.CleanedUp)
                self.reports.write_target(smig, own)
            return None
        if phase is MigrationPhase.Running:
            return self._watch_arrival(smig, own, server_uid)
        if phase not in (MigrationPhase.PreChecking, MigrationPhase.Preparing):
            return None
        if step is TargetStep.Waiting:
            source = smig.status.source or MigrationSourceReport()
            if not source.storageProbe:
                return None  # the source has not reported yet
            step = self._check(smig, own, source)
        if step is TargetStep.Checked:
            self._prepare(key, smig, own, server_uid)
        return None

    def _watch_arrival(self, smig: ServerMigration, own: Own, server_uid: str) -> float | None:
        """While the migration runs: record when the guest has arrived. If the source host
        dies, this is how the controller learns where the guest ended up."""
        if own.target.step is TargetStep.Arrived:
            return None
        if not self.moves.arrived(server_uid):
            return ARRIVAL_POLL
        own.target = own.target.at(TargetStep.Arrived)
        self.reports.write_target(smig, own)
        return None

    def _check(self, smig: ServerMigration, own: Own, source: MigrationSourceReport) -> TargetStep:
        if self.deps.virt_type is VirtType.test:
            why = "libvirt's test driver cannot migrate"
            own.target = own.target.at(TargetStep.Refused, "MigrationUnsupported", why)
            self.reports.write_target(smig, own)
            return TargetStep.Refused
        found = []
        if source.guestCPU:
            arch = source.arch or "x86_64"
            ok, said = self.moves.compare_cpu(source.guestCPU, arch, self.deps.virt_type.value)
            if not ok:
                why = f"{self.host}: {said}"
                own.target = own.target.at(TargetStep.Refused, "CPUIncompatible", why)
                self.reports.write_target(smig, own)
                return TargetStep.Refused
            found.append(said)
        shared = self._sees_probe(source.storageProbe or "")
        found.append("instances folder shared with the source" if shared else "disks are copied")
        own.target = own.target.at(TargetStep.Checked, "Compatible", "; ".join(found))
        own.target.sharedStorage = shared
        self.reports.write_target(smig, own)
        return TargetStep.Checked

    def _sees_probe(self, probe: str) -> bool:
        name, _, token = probe.partition(":")
        path = pathlib.Path(self.deps.settings.instances_dir) / name
        try:
            return bool(token) and path.read_text() == token
        except OSError:
            return False

    def _prepare(self, key: Key, smig: ServerMigration, own: Own, server_uid: str) -> None:
        server = self.kube.get(Server, smig.spec.serverRef, key[0])
        if server is None or server.uid != server_uid:
            own.target = own.target.at(TargetStep.Refused, "ServerNotFound", "the Server is gone")
            self.reports.write_target(smig, own)
            return
        with self._lock:
            self._prepared[key] = (server_uid, bool(own.target.sharedStorage))
        try:
            reconcile.domain_config(self.deps, server)  # images, disks, config drive
        except reconcile.Permanent as exc:
            own.target = own.target.at(TargetStep.Refused, exc.reason, f"{self.host}: {exc}")
            self.reports.write_target(smig, own)
            return
        except RetryLater:
            # An image server down, say: the step is tried again with backoff, and the
            # controller gives up after its preparation timeout.
            raise
        own.target = own.target.at(TargetStep.Prepared)
        self.reports.write_target(smig, own)

    def _clean(self, server_uid: str, shared: bool) -> None:
        """Remove what a failed migration left here, unless the Server is bound here."""
        bound_here = self.kube.list_of(Server, field_selector=f"{constants.NODE_FIELD}={self.host}")
        if any(server.uid == server_uid for server in bound_here):
            return
        if self.deps.release_nics is not None:
            self.deps.release_nics(server_uid)
        guest = self.deps.guests.get(server_uid)
        if guest is not None:
            log.info("removing the domain a failed migration left: %s", guest.name)
            self.deps.guests.destroy(server_uid, force=True)
            self.deps.guests.undefine(server_uid)
        if not shared:
            self.deps.storage.delete_volumes(reconcile.volume_prefix(server_uid))
        pathlib.Path(reconcile.console_path(self.deps.settings, server_uid)).unlink(missing_ok=True)
