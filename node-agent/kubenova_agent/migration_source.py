"""The source host's part in a migration (Nova's ``live_migration`` on the source, and
``migrate_disk_and_power_off`` for a cold move).

Steps, each recorded in ``status.source`` (:class:`~kubenova_api.resources.SourceStep`):

1. **Reported** (PreChecking/Preparing): the guest's live CPU definition and a probe file
   written into the instances folder (the target sees it only if the folder is shared).
2. **Started** (Running): the peer-to-peer libvirt migration — or, for a stopped guest, the
   copy of its disks — runs in a thread of its own; progress is written every second, the
   completion timeout's action applied, an abort the controller asks for carried out.
3. **Succeeded** or **Failed**, with the reason; on success the source's definition and copied
   disks go. An agent restarted mid-way finds out how a migration it had started ended.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
import time
import uuid as uuidlib
from collections.abc import Callable

from kubenova_agent import driver, reconcile
from kubenova_agent.driver import Options, State
from kubenova_agent.libvirt import errors
from kubenova_agent.migration_status import Own, Reports, progress_of
from kubenova_api import kube
from kubenova_api.kube import ObjectRef
from kubenova_api.resources import (
    CompletionAction,
    Hypervisor,
    MigrationEndpoint,
    MigrationPhase,
    MigrationProgress,
    Outcome,
    ServerMigration,
    SourceStep,
    parse_duration,
)

log = logging.getLogger(__name__)

GIB_MIB = 1024
MIN_TIMEOUT_GIB = 2.0
"""Nova counts at least 2 GiB when it scales the completion timeout."""
PROGRESS_EVERY = 1.0
"""Seconds between progress writes while a migration runs."""
MIGRATED = "Migrated"


@dataclasses.dataclass
class Job:
    """One migration this host is the source of, running in its own thread."""

    smig_uid: str
    server_uid: str
    target: str
    opts: Options
    timeout: float | None
    action: CompletionAction
    abort: Outcome | None = None
    """Set once the migration is being aborted, with why."""


class Source:
    def __init__(
        self,
        deps: reconcile.Deps,
        k: kube.Kube,
        moves: driver.Migrations,
        reports: Reports,
        requeue_server: Callable[[str], None],
        again: Callable[[ServerMigration, float], None],
    ) -> None:
        self.deps = deps
        self.kube = k
        self.moves = moves
        self.reports = reports
        self.host = deps.settings.host_name
        self._requeue_server = requeue_server
        self._again = again
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def job_of(self, server_uid: str) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.server_uid == server_uid), None)

    # ------------------------------------------------------------------ the step
    def reconcile(self, smig: ServerMigration) -> None:
        status = smig.status
        server_uid = status.serverUID
        if not server_uid:
            return
        cancel = cancellation(smig)
        with self._lock:
            job = self._jobs.get(smig.uid)
        if job is not None:
            if cancel is not None:
                self._abort(job, cancel)
            return
        own = self.reports.of(smig)
        if smig.phase in (MigrationPhase.Succeeded, MigrationPhase.Failed):
            self._drop_probe(smig.uid)
            self.reports.forget(smig.uid)
            self._requeue_server(server_uid)
            return
        step = own.source.step
        if smig.phase in (MigrationPhase.PreChecking, MigrationPhase.Preparing):
            if step is SourceStep.Waiting:
                self._report(smig, own, server_uid)
            return
        if smig.phase is not MigrationPhase.Running or step in (
            SourceStep.Succeeded,
            SourceStep.Failed,
        ):
            return
        if step is SourceStep.Started:
            self._recover(smig, own, cancel)
        elif cancel is not None:
            self._fail(smig, own, cancel)
        elif status.live is False:
            self._start_cold(smig, own, server_uid)
        else:
            self._start_live(smig, own, server_uid)

    def _report(self, smig: ServerMigration, own: Own, server_uid: str) -> None:
        """The guest's CPU (from its live definition) and the storage probe."""
        guest = self.deps.guests.get(server_uid)
        if guest is None:
            self._fail(smig, own, Outcome(reason="GuestNotFound", message=f"not on {self.host}"))
            return
        cpu, arch = self.moves.guest_cpu(server_uid) if guest.alive else (None, "x86_64")
        if cpu is not None:
            own.source.guestCPU = cpu
        own.source.arch = arch
        own.source.storageProbe = self._write_probe(smig.uid)
        self.reports.write_source(smig, own)

    def _fail(self, smig: ServerMigration, own: Own, why: Outcome) -> None:
        """Record this side's failure (the controller ends the migration with it)."""
        own.source.result = MigrationPhase.Failed.value
        own.source.reason = why.reason
        own.source.message = why.message
        self.reports.write_source(smig, own)

    def _succeed(self, smig: ServerMigration, own: Own, message: str) -> None:
        own.source.result = MigrationPhase.Succeeded.value
        own.source.reason = MIGRATED
        own.source.message = message
        self.reports.write_source(smig, own)

    def _endpoint(self, target: str) -> MigrationEndpoint | None:
        """Where migrations to ``target`` go, from its Hypervisor's status."""
        hv = self.kube.get(Hypervisor, target)
        return hv.status.migration if hv is not None else None

    # ------------------------------------------------------------------ the probe
    def _probe_path(self, smig_uid: str) -> pathlib.Path:
        return pathlib.Path(self.deps.settings.instances_dir) / f".kubenova-probe-{smig_uid}"

    def _write_probe(self, smig_uid: str) -> str:
        token = uuidlib.uuid4().hex
        path = self._probe_path(smig_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
        return f"{path.name}:{token}"

    def _drop_probe(self, smig_uid: str) -> None:
        self._probe_path(smig_uid).unlink(missing_ok=True)

    # ------------------------------------------------------------------ starting
    def _start_live(self, smig: ServerMigration, own: Own, server_uid: str) -> None:
        spec, status = smig.spec, smig.status
        target = str(status.targetNode)
        self._drop_probe(smig.uid)
        endpoint = self._endpoint(target)
        if endpoint is None:
            why = f"host {target} publishes no migration endpoint"
            self._fail(smig, own, Outcome(reason="TargetUnreachable", message=why))
            return
        shared = bool(status.target and status.target.sharedStorage)
        opts = Options(
            dest_uri=endpoint.libvirtURI,
            address=endpoint.address,
            block=not shared,
            bandwidth_mibps=spec.bandwidthMiBps,
            auto_converge=spec.autoConverge,
            post_copy=spec.allowPostCopy,
        )
        flavor = status.flavor
        gib = (flavor.memoryMiB if flavor else 0) / GIB_MIB
        if opts.block and flavor is not None:
            gib += flavor.diskGiB
        per_gib = parse_duration(spec.completionTimeoutPerGiB)
        timeout = per_gib * max(MIN_TIMEOUT_GIB, gib) if per_gib > 0 else None
        job = Job(smig.uid, server_uid, target, opts, timeout, spec.completionAction)
        self._launch(smig, own, job, self._run_live)
        log.info(
            "migrating %s to %s (%s, timeout %s)",
            server_uid,
            target,
            "block" if opts.block else "shared storage",
            f"{timeout:.0f}s" if timeout else "none",
        )

    def _start_cold(self, smig: ServerMigration, own: Own, server_uid: str) -> None:
        """A stopped guest moves by its disks (Nova's ``migrate_disk_and_power_off``): copied
        to the target's volumes unless shared; the target defines it once it is bound there."""
        status = smig.status
        target = str(status.targetNode)
        self._drop_probe(smig.uid)
        guest = self.deps.guests.get(server_uid)
        if guest is not None and guest.state not in (State.shutoff, State.crashed):
            why = f"the guest is {guest.state.value.lower()}; a cold migration needs it off"
            self._fail(smig, own, Outcome(reason="NotStopped", message=why))
            return
        endpoint = self._endpoint(target)
        shared = bool(status.target and status.target.sharedStorage)
        if endpoint is None and not shared:
            why = f"host {target} publishes no migration endpoint"
            self._fail(smig, own, Outcome(reason="TargetUnreachable", message=why))
            return
        opts = Options(
            dest_uri=endpoint.libvirtURI if endpoint else "",
            address=endpoint.address if endpoint else "",
            block=not shared,
        )
        job = Job(smig.uid, server_uid, target, opts, None, CompletionAction.Abort)
        self._launch(smig, own, job, self._run_cold)

    def _launch(
        self,
        smig: ServerMigration,
        own: Own,
        job: Job,
        run: Callable[[Job, ServerMigration, Own], None],
    ) -> None:
        """Record that the move began (a restarted agent then knows one ran), then run it in
        its own thread; the Server is looked at again (it is MIGRATING now)."""
        own.source.started = True
        own.progress = MigrationProgress(percent=0)
        self.reports.write_source(smig, own)
        with self._lock:
            self._jobs[job.smig_uid] = job
        threading.Thread(
            target=self._running,
            args=(run, job, smig, own),
            name=f"{self.host}-migrate",
            daemon=True,
        ).start()
        self._requeue_server(job.server_uid)

    def _running(
        self,
        run: Callable[[Job, ServerMigration, Own], None],
        job: Job,
        smig: ServerMigration,
        own: Own,
    ) -> None:
        try:
            run(job, smig, own)
        except Exception:
            log.exception("migration of %s: finishing failed", job.server_uid)
        finally:
            with self._lock:
                self._jobs.pop(job.smig_uid, None)
            self._requeue_server(job.server_uid)
            self._again(smig, 0.0)

    def _abort(self, job: Job, why: Outcome) -> None:
        if job.abort is None:
            log.info("aborting the migration of %s: %s", job.server_uid, why)
            job.abort = why
        self.moves.abort(job.server_uid)

    # ------------------------------------------------------------------ cold
    def _run_cold(self, job: Job, smig: ServerMigration, own: Own) -> None:
        started = time.monotonic()
        try:
            copied = self._copy_disks(job, smig, own, started) if job.opts.block else 0
        except errors.HypervisorError as exc:
            why = job.abort or Outcome(reason="CopyFailed")
            message = f"copying the disks failed: {exc}; the server stays on {self.host}"
            self._fail(smig, own, Outcome(reason=why.reason, message=message))
            return
        self._clean_source(job.server_uid, job.opts.block)
        elapsed = time.monotonic() - started
        own.progress = MigrationProgress(
            dataTotalBytes=copied,
            dataProcessedBytes=copied,
            diskProcessedBytes=copied,
            elapsedMs=int(elapsed * 1000),
            downtimeMs=0,
            percent=100,
        )
        what = f"{copied / (1 << 20):.1f} MiB of disk copied" if job.opts.block else "shared"
        self._succeed(smig, own, f"moved to {job.target} while stopped in {elapsed:.1f}s ({what})")
        log.info("cold-migrated %s to %s: %s", job.server_uid, job.target, what)

    def _copy_disks(self, job: Job, smig: ServerMigration, own: Own, started: float) -> int:
        prefix = reconcile.volume_prefix(job.server_uid)
        volumes = [
            (name, size)
            for name, size in self.deps.storage.volumes(prefix)
            if not name.endswith("config.iso")  # the target writes its own
        ]
        total = sum(size for _, size in volumes) or 1
        copied = 0
        last = 0.0

        def on_bytes(n: int) -> None:
            nonlocal last
            if job.abort is not None:
                raise errors.HypervisorError(str(job.abort))
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                done = copied + n
                own.progress = MigrationProgress(
                    dataTotalBytes=total,
                    dataProcessedBytes=done,
                    dataRemainingBytes=max(0, total - done),
                    diskProcessedBytes=done,
                    elapsedMs=int((now - started) * 1000),
                    percent=min(99, round(100 * done / total)),
                )
                self.reports.write_source(smig, own)

        for name, _size in volumes:
            copied += self.moves.copy_volume(
                self.deps.storage.pool_name, name, job.opts.dest_uri, on_bytes
            )
        return copied

    # ------------------------------------------------------------------ live
    def _run_live(self, job: Job, smig: ServerMigration, own: Own) -> None:
        failure: list[errors.HypervisorError] = []
        done = threading.Event()
        if job.opts.block:
            self._copy_nvram(job)

        def go() -> None:
            try:
                self.moves.migrate(job.server_uid, job.opts)
            except errors.HypervisorError as exc:
                failure.append(exc)
            except Exception as exc:  # never leave the job hanging
                failure.append(errors.HypervisorError(str(exc)))
            finally:
                done.set()

        started = time.monotonic()
        threading.Thread(target=go, name=f"{self.host}-migrate-call", daemon=True).start()
        last_write = 0.0
        acted = False
        paused_by_us = False
        while not done.wait(0.25):
            stats = self.moves.stats(job.server_uid)
            now = time.monotonic()
            if stats is not None and now - last_write >= PROGRESS_EVERY:
                own.progress = progress_of(stats)
                try:
                    self.reports.write_source(smig, own)
                except Exception as exc:
                    log.debug("progress write failed: %s", exc)
                last_write = now
            if job.timeout is not None and not acted and now - started > job.timeout:
                acted = True
                paused_by_us = self._on_timeout(job, smig)
        elapsed = time.monotonic() - started
        if failure:
            self._after_failure(job, smig, own, failure[0], paused_by_us)
        else:
            self._after_success(job, smig, own, elapsed)

    def _on_timeout(self, job: Job, smig: ServerMigration) -> bool:
        """Apply the completion action; returns whether the guest was paused for it."""
        assert job.timeout is not None
        ref = ObjectRef.to(smig)
        after = f"not done after {job.timeout:.0f}s"
        if job.action is CompletionAction.PostCopy and job.opts.post_copy:
            try:
                self.moves.start_post_copy(job.server_uid)
                self.kube.event(ref, "PostCopy", f"{after}: switched to post-copy")
                return False
            except errors.HypervisorError as exc:
                log.warning("post-copy refused (%s); aborting instead", exc)
        elif job.action is CompletionAction.Pause:
            try:
                self.deps.guests.pause(job.server_uid)
                self.kube.event(ref, "Paused", f"{after}: paused the guest to finish")
                return True
            except errors.HypervisorError as exc:
                log.warning("pausing refused (%s); aborting instead", exc)
        self._abort(
            job, Outcome(reason="Timeout", message=f"not finished after {job.timeout:.0f}s")
        )
        return False

    def _after_failure(
        self,
        job: Job,
        smig: ServerMigration,
        own: Own,
        failure: errors.HypervisorError,
        paused_by_us: bool,
    ) -> None:
        guest = self.deps.guests.get(job.server_uid)
        if paused_by_us and guest is not None and guest.state is State.paused:
            self.deps.guests.unpause(job.server_uid)
        if guest is not None and guest.alive:
            where = f"the guest keeps running on {self.host}"
        else:
            where = f"the guest is {guest.state.value if guest else 'gone'} on {self.host}"
        why = job.abort or Outcome(reason="MigrationFailed")
        message = f"{why.message}; " if why.message else ""
        message += f"libvirt: {failure}; {where}"
        self._fail(smig, own, Outcome(reason=why.reason, message=message))
        log.warning("migration of %s failed: %s", job.server_uid, message)

    def _after_success(self, job: Job, smig: ServerMigration, own: Own, elapsed: float) -> None:
        stats = self.moves.completed_stats(job.server_uid)
        if stats is not None:
            own.progress = progress_of(stats)
            own.progress.percent = 100
        self._clean_source(job.server_uid, job.opts.block)
        downtime = own.progress.downtimeMs if own.progress else None
        message = f"moved to {job.target} in {elapsed:.1f}s"
        if downtime is not None:
            message += f", downtime {downtime} ms"
        self._succeed(smig, own, message)
        log.info("migrated %s to %s in %.1fs", job.server_uid, job.target, elapsed)

    def _copy_nvram(self, job: Job) -> None:
        """A live block migration copies the guest's disks, not its UEFI variable store (a
        file only libvirt knows): copy it first, so that the Server keeps its variables."""
        name = reconcile.nvram_name(job.server_uid)
        try:
            if any(vol == name for vol, _ in self.deps.storage.volumes(name)):
                pool = self.deps.storage.pool_name
                copied = self.moves.copy_volume(pool, name, job.opts.dest_uri)
                log.info("copied the UEFI variable store of %s (%d bytes)", job.server_uid, copied)
        except errors.HypervisorError as exc:
            # The guest runs on with its variables in memory; the target's store starts from
            # the firmware's template, and a later cold boot would miss what was set since.
            log.warning("could not copy the UEFI variable store of %s: %s", job.server_uid, exc)

    def _clean_source(self, server_uid: str, block: bool) -> None:
        """After a successful move: the inactive definition, the console log, and the disks
        when they were copied (shared disks are the target's now)."""
        self.deps.guests.undefine(server_uid)
        if block:
            self.deps.storage.delete_volumes(reconcile.volume_prefix(server_uid))
        pathlib.Path(reconcile.console_path(self.deps.settings, server_uid)).unlink(missing_ok=True)

    # ------------------------------------------------------------------ after a restart
    def _recover(self, smig: ServerMigration, own: Own, cancel: Outcome | None) -> None:
        """A migration was started by an earlier run of this agent: find out how it ended."""
        status = smig.status
        server_uid = str(status.serverUID)
        if self.moves.stats(server_uid) is not None:
            if cancel is not None:
                # Started by an earlier run of this agent and still going: abort it there.
                log.info("aborting the migration of %s left running: %s", server_uid, cancel)
                self.moves.abort(server_uid)
            self._again(smig, 1.0)
            return  # libvirt still runs it; look again shortly
        guest = self.deps.guests.get(server_uid)
        if guest is not None and not self.moves.migrated_away(server_uid):
            why = cancel or Outcome(reason="AgentRestarted", message="the agent restarted mid-way")
            message = f"{why.message}; the guest keeps running on {self.host}"
            self._fail(smig, own, Outcome(reason=why.reason, message=message))
            return
        target = str(status.targetNode)
        endpoint = self._endpoint(target)
        there = self.moves.peer_running(endpoint.libvirtURI, server_uid) if endpoint else None
        if there:
            self._clean_source(server_uid, not (status.target and status.target.sharedStorage))
            self._succeed(smig, own, f"moved to {target} (finished while the agent was restarting)")
        else:
            lost = f"the guest is neither running on {self.host} nor on {target}"
            self._fail(smig, own, Outcome(reason="GuestLost", message=lost))


def cancellation(smig: ServerMigration) -> Outcome | None:
    """Why the migration must stop now: deleted (cancelled), or the controller asked."""
    if smig.metadata.deleting:
        return Outcome(reason="Cancelled", message="the ServerMigration was deleted")
    return smig.status.abortRequested
