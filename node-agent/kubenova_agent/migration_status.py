"""This agent's part of a ServerMigration's status — the source's report and progress, or
the target's report — written under the agent's field manager and remembered, since the
informer's copy may lag behind what was just written."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Protocol

from kubenova_agent.driver import JobStats
from kubenova_api import kube
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import (
    MigrationProgress,
    MigrationSourceReport,
    MigrationTargetReport,
    ServerMigration,
    ServerMigrationStatus,
)


class StatusWriter(Protocol):
    def apply_status(
        self,
        ref: ObjectRef,
        status: ServerMigrationStatus,
        *,
        resource_version: str | None = None,
        force: bool = False,
    ) -> object: ...


def progress_of(stats: JobStats) -> MigrationProgress:
    total = stats.data_total or (stats.data_processed + stats.data_remaining)
    percent = 0
    if total:
        percent = min(100, max(0, round(100 * (total - stats.data_remaining) / total)))
    out = MigrationProgress(
        dataTotalBytes=total,
        dataProcessedBytes=stats.data_processed,
        dataRemainingBytes=stats.data_remaining,
        diskProcessedBytes=stats.disk_processed,
        memoryIterations=stats.memory_iterations,
        elapsedMs=stats.elapsed_ms,
        percent=percent,
    )
    if stats.downtime_ms is not None:
        out.downtimeMs = stats.downtime_ms
    return out


def recent(when: dt.datetime | None, seconds: float = 300.0) -> bool:
    """Whether ``when`` is less than ``seconds`` ago (True when it is not known)."""
    return when is None or (dt.datetime.now(dt.UTC) - when).total_seconds() < seconds


@dataclasses.dataclass
class Own:
    """This agent's part of one ServerMigration's status, as it last wrote it."""

    source: MigrationSourceReport = dataclasses.field(default_factory=MigrationSourceReport)
    target: MigrationTargetReport = dataclasses.field(default_factory=MigrationTargetReport)
    progress: MigrationProgress | None = None


class Reports:
    """Writes a role's part of ServerMigration statuses, remembering what it wrote (the
    informer's copy may lag behind)."""

    def __init__(self, k: StatusWriter) -> None:
        self._kube = k
        self._lock = threading.Lock()
        self._own: dict[str, Own] = {}

    def of(self, smig: ServerMigration) -> Own:
        """What this agent last wrote of ``smig``, else what the object says."""
        with self._lock:
            own = self._own.get(smig.uid)
        if own is None:
            st = smig.status
            return Own(
                source=(st.source or MigrationSourceReport()).model_copy(),
                target=(st.target or MigrationTargetReport()).model_copy(),
                progress=st.progress.model_copy() if st.progress else None,
            )
        return dataclasses.replace(
            own,
            source=own.source.model_copy(),
            target=own.target.model_copy(),
            progress=own.progress.model_copy() if own.progress else None,
        )

    def write_source(self, smig: ServerMigration, own: Own) -> None:
        status = ServerMigrationStatus(source=own.source)
        if own.progress is not None:
            status.progress = own.progress
        self._write(smig, own, status)

    def write_target(self, smig: ServerMigration, own: Own) -> None:
        self._write(smig, own, ServerMigrationStatus(target=own.target))

    def _write(self, smig: ServerMigration, own: Own, status: ServerMigrationStatus) -> None:
        ref = ObjectRef.to(smig)
        kube.retrying(lambda: self._kube.apply_status(ref, status))
        with self._lock:
            self._own[smig.uid] = own

    def forget(self, smig_uid: str) -> None:
        with self._lock:
            self._own.pop(smig_uid, None)
