"""The agent's part in moving a Server (Nova's ``pre_live_migration`` / ``live_migration`` /
``rollback_live_migration_at_destination``), driven by ServerMigrations that name this host.

As the **source**: report the guest's CPU definition and write a probe file into the instances
folder (the target sees it only if the folder is shared); once the controller says Running,
start the peer-to-peer migration in its own thread, report its progress, apply the completion
timeout's action, abort it when asked, and report the result. The guest is never touched by the
Server reconciler while it moves.

As the **target**: compare the guest's CPU with what this host's hypervisor provides, detect
shared storage, fetch the images and create the disks the guest will need; after a failure,
remove whatever arrived (a domain, disks that are not shared, the console log).

Each agent writes only its own part of the status (``source`` + ``progress``, or ``target``)
under its own field manager; the controller owns the phase."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from kubenova_agent import informer, reconcile, workqueue
from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.domain_xml import VirtType
from kubenova_agent.libvirt.guest import State
from kubenova_agent.libvirt.migration import JobStats, Migrations, Options, peer_running
from kubenova_api import common, constants, kube
from kubenova_api.resources import CompletionAction, MigrationPhase, parse_duration

log = logging.getLogger(__name__)

SOURCE, TARGET = "source", "target"
Key = tuple[str, str, str]
"""(role, namespace, name)"""

GIB_MIB = 1024
MIN_TIMEOUT_GIB = 2.0
"""Nova counts at least 2 GiB when it scales the completion timeout."""
ARRIVAL_POLL = 2.0
"""Seconds between a target's looks for the arriving guest while the migration runs."""
PROGRESS_EVERY = 1.0
"""Seconds between progress writes while a migration runs."""


def _recent(stamp: str | None, seconds: float = 300.0) -> bool:
    """Whether an RFC 3339 time is less than ``seconds`` ago (True when it is not known)."""
    when = common.parse_time(stamp)
    return when is None or (dt.datetime.now(dt.UTC) - when).total_seconds() < seconds


def smig_ref(body: dict[str, Any]) -> kube.ObjectRef:
    return kube.ObjectRef.of(body, "ServerMigration", constants.SERVERMIGRATIONS)


def progress_of(stats: JobStats) -> dict[str, Any]:
    total = stats.data_total or (stats.data_processed + stats.data_remaining)
    percent = 0
    if total:
        percent = min(100, max(0, round(100 * (total - stats.data_remaining) / total)))
    out: dict[str, Any] = {
        "dataTotalBytes": total,
        "dataProcessedBytes": stats.data_processed,
        "dataRemainingBytes": stats.data_remaining,
        "diskProcessedBytes": stats.disk_processed,
        "memoryIterations": stats.memory_iterations,
        "elapsedMs": stats.elapsed_ms,
        "percent": percent,
    }
    if stats.downtime_ms is not None:
        out["downtimeMs"] = stats.downtime_ms
    return out


@dataclasses.dataclass
class Job:
    """One live migration this host is the source of."""

    smig_uid: str
    server_uid: str
    target: str
    opts: Options
    timeout: float | None
    action: CompletionAction
    abort_reason: str | None = None

    def abort(self, reason: str, migrations: Migrations) -> None:
        if self.abort_reason is None:
            log.info("aborting the migration of %s: %s", self.server_uid, reason)
            self.abort_reason = reason
        migrations.abort(self.server_uid)


class MigrationAgent:
    def __init__(
        self,
        deps: reconcile.Deps,
        migrations: Migrations,
        requeue_server: Callable[[str], None],
    ) -> None:
        self.deps = deps
        self.migrations = migrations
        self.host = deps.settings.host_name
        self._requeue_server = requeue_server
        self.queue: workqueue.WorkQueue[Key] = workqueue.WorkQueue()
        k = deps.kube
        self.as_source = informer.ServerInformer(
            k,
            self.host,
            lambda key: self.queue.add((SOURCE, *key)),
            plural=constants.SERVERMIGRATIONS,
            field=constants.SOURCE_FIELD,
        )
        self.as_target = informer.ServerInformer(
            k,
            self.host,
            lambda key: self.queue.add((TARGET, *key)),
            plural=constants.SERVERMIGRATIONS,
            field=constants.TARGET_FIELD,
        )
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self._own: dict[str, dict[str, Any]] = {}
        """Per ServerMigration UID: this agent's part of its status as last written."""
        self._prepared: dict[tuple[str, str], tuple[str, bool]] = {}
        """(namespace, name) -> (server UID, shared storage) of migrations prepared here."""

    # ------------------------------------------------------------------ queries
    def holds(self, server_uid: str) -> str | None:
        """Why the Server reconciler must leave this guest alone (it is moving away), or None."""
        hold = self._hold(server_uid)
        return hold[0] if hold is not None else None

    def moved_away(self, server_uid: str) -> bool:
        """Whether the guest left this host by a migration the controller has not yet turned
        into a rebinding: its disks may be the target's now (shared), so deleting the Server
        is the target's job once it is bound there."""
        hold = self._hold(server_uid)
        return hold is not None and hold[1]

    def _hold(self, server_uid: str) -> tuple[str, bool] | None:
        """(why, whether the guest has left already) while a migration from here owns it."""
        with self._lock:
            for job in self.jobs.values():
                if job.server_uid == server_uid:
                    return f"live-migrating to {job.target}", False
        for body in self.as_source.items():
            status = body.get("status") or {}
            if status.get("serverUID") != server_uid:
                continue
            phase = status.get("phase")
            result = (status.get("source") or {}).get("result")
            if phase == MigrationPhase.Running and result is None:
                return f"migrating to {status.get('targetNode')}", False
            if MigrationPhase.Succeeded in (phase, result):
                # Moved away: hold until the rebinding takes the Server from this host —
                # unless the guest runs here (it came back later, or never left).
                guest = self.deps.guests.get(server_uid)
                if guest is None or guest.state not in (State.running, State.paused):
                    return f"migrated to {status.get('targetNode')}", True
        return None

    def incoming(self, server_uid: str) -> bool:
        """Whether a guest with this UUID is (or just was) migrating to this host."""
        for body in self.as_target.items():
            status = body.get("status") or {}
            if status.get("serverUID") != server_uid:
                continue
            phase = status.get("phase")
            if phase in (MigrationPhase.PreChecking, MigrationPhase.Preparing):
                return True
            if phase == MigrationPhase.Running or (
                phase == MigrationPhase.Succeeded and _recent(status.get("completedAt"))
            ):
                return True
        with self._lock:
            return any(uid == server_uid for uid, _ in self._prepared.values())

    # ------------------------------------------------------------------ running
    def work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                role, namespace, name = key
                source = self.as_source if role == SOURCE else self.as_target
                body = source.get((namespace, name))
                if role == SOURCE:
                    if body is not None:
                        self.reconcile_source(body)
                else:
                    self.reconcile_target((namespace, name), body)
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

    # ------------------------------------------------------------------ writing
    def _mine(self, body: dict[str, Any], part: str) -> dict[str, Any]:
        """This agent's part of the status: what it last wrote, else what the object says."""
        uid = body["metadata"]["uid"]
        with self._lock:
            own = self._own.get(uid)
        if own is None:
            status = body.get("status") or {}
            own = {part: dict(status.get(part) or {})}
            if part == SOURCE and status.get("progress"):
                own["progress"] = dict(status["progress"])
        return {k: dict(v) for k, v in own.items()}

    def _write(self, body: dict[str, Any], own: dict[str, Any]) -> None:
        kube.retrying(lambda: self.deps.kube.apply_status(smig_ref(body), own))
        with self._lock:
            self._own[body["metadata"]["uid"]] = own

    # ------------------------------------------------------------------ source
    def _fail(self, body: dict[str, Any], own: dict[str, Any], reason: str, message: str) -> None:
        """Record this side's failure (the controller ends the migration with it)."""
        own[SOURCE].update(result=MigrationPhase.Failed, reason=reason, message=message)
        self._write(body, own)

    def _endpoint(self, target: str) -> dict[str, Any] | None:
        """Where migrations to ``target`` go, from its Hypervisor's status."""
        hv = self.deps.kube.get_or_none(kube.ObjectRef("Hypervisor", constants.HYPERVISORS, target))
        endpoint = ((hv or {}).get("status") or {}).get("migration")
        return dict(endpoint) if endpoint else None

    def reconcile_source(self, body: dict[str, Any]) -> None:
        meta, status, spec = body["metadata"], body.get("status") or {}, body["spec"]
        uid = meta["uid"]
        phase = status.get("phase")
        server_uid = status.get("serverUID")
        if not server_uid:
            return
        cancel = (
            "Cancelled: the ServerMigration was deleted"
            if meta.get("deletionTimestamp")
            else status.get("abortRequested")
        )
        with self._lock:
            job = self.jobs.get(uid)
        if job is not None:
            if cancel:
                job.abort(cancel, self.migrations)
            return
        own = self._mine(body, SOURCE)
        src = own[SOURCE]
        if phase in (MigrationPhase.Succeeded, MigrationPhase.Failed):
            self._drop_probe(uid)
            with self._lock:
                self._own.pop(uid, None)
            self._requeue_server(server_uid)
            return
        if phase in (MigrationPhase.PreChecking, MigrationPhase.Preparing) and not src.get(
            "storageProbe"
        ):
            guest = self.deps.guests.get(server_uid)
            if guest is None:
                self._fail(body, own, "GuestNotFound", f"the guest is not on {self.host}")
                return
            cpu, arch = (
                self.migrations.guest_cpu(server_uid)
                if guest.state in (State.running, State.paused)
                else (None, "x86_64")
            )
            if cpu is not None:
                src["guestCPU"] = cpu
            src["arch"] = arch
            src["storageProbe"] = self._write_probe(uid)
            self._write(body, own)
            return
        if phase != MigrationPhase.Running or src.get("result"):
            return
        if src.get("started"):
            if cancel and self.migrations.stats(server_uid) is not None:
                # Started by an earlier run of this agent and still going: abort it there.
                log.info("aborting the migration of %s left running: %s", server_uid, cancel)
                self.migrations.abort(server_uid)
            self._recover(body, own, cancel)
            return
        if cancel:
            self._fail(body, own, "Cancelled", cancel)
            return
        if status.get("live") is False:
            self._start_cold(body, own, status, server_uid)
        else:
            self._start(body, own, spec, status, server_uid)

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

    def _start(
        self,
        body: dict[str, Any],
        own: dict[str, Any],
        spec: dict[str, Any],
        status: dict[str, Any],
        server_uid: str,
    ) -> None:
        target = str(status.get("targetNode"))
        self._drop_probe(body["metadata"]["uid"])
        endpoint = self._endpoint(target)
        if not endpoint:
            self._fail(
                body, own, "TargetUnreachable", f"host {target} publishes no migration endpoint"
            )
            return
        shared = bool((status.get("target") or {}).get("sharedStorage"))
        opts = Options(
            dest_uri=endpoint["libvirtURI"],
            address=endpoint["address"],
            block=not shared,
            bandwidth_mibps=int(spec.get("bandwidthMiBps", 0)),
            auto_converge=bool(spec.get("autoConverge", False)),
            post_copy=bool(spec.get("allowPostCopy", False)),
        )
        flavor = status.get("flavor") or {}
        gib = int(flavor.get("memoryMiB", 0)) / GIB_MIB
        if opts.block:
            gib += int(flavor.get("diskGiB", 0))
        per_gib = parse_duration(str(spec.get("completionTimeoutPerGiB", "150s")))
        timeout = per_gib * max(MIN_TIMEOUT_GIB, gib) if per_gib > 0 else None
        job = Job(
            smig_uid=body["metadata"]["uid"],
            server_uid=server_uid,
            target=target,
            opts=opts,
            timeout=timeout,
            action=CompletionAction(spec.get("completionAction", CompletionAction.Abort)),
        )
        self._launch(body, own, job, self._run)
        log.info(
            "migrating %s to %s (%s, timeout %s)",
            server_uid,
            target,
            "block" if opts.block else "shared storage",
            f"{timeout:.0f}s" if timeout else "none",
        )

    def _start_cold(
        self, body: dict[str, Any], own: dict[str, Any], status: dict[str, Any], server_uid: str
    ) -> None:
        """A stopped guest moves by its disks (Nova's ``migrate_disk_and_power_off``): copied
        to the target's volumes unless shared; the target defines it once it is bound there."""
        target = str(status.get("targetNode"))
        self._drop_probe(body["metadata"]["uid"])
        guest = self.deps.guests.get(server_uid)
        if guest is not None and guest.state not in (State.shutoff, State.crashed):
            self._fail(
                body,
                own,
                "NotStopped",
                f"the guest is {guest.state.value.lower()}; a cold migration needs it off",
            )
            return
        endpoint = self._endpoint(target)
        shared = bool((status.get("target") or {}).get("sharedStorage"))
        if not endpoint and not shared:
            self._fail(
                body, own, "TargetUnreachable", f"host {target} publishes no migration endpoint"
            )
            return
        job = Job(
            smig_uid=body["metadata"]["uid"],
            server_uid=server_uid,
            target=target,
            opts=Options(
                dest_uri=(endpoint or {}).get("libvirtURI", ""),
                address=(endpoint or {}).get("address", ""),
                block=not shared,
            ),
            timeout=None,
            action=CompletionAction.Abort,
        )
        self._launch(body, own, job, self._run_cold)

    def _launch(
        self,
        body: dict[str, Any],
        own: dict[str, Any],
        job: Job,
        run: Callable[[Job, dict[str, Any], dict[str, Any]], None],
    ) -> None:
        """Record that the move began (a restarted agent then knows one ran), then run it in
        its own thread; the Server is looked at again (it is MIGRATING now)."""
        own[SOURCE]["started"] = True
        own["progress"] = {"percent": 0}
        self._write(body, own)
        with self._lock:
            self.jobs[job.smig_uid] = job
        threading.Thread(
            target=run, args=(job, body, own), name=f"{self.host}-migrate", daemon=True
        ).start()
        self._requeue_server(job.server_uid)

    def _run_cold(self, job: Job, body: dict[str, Any], own: dict[str, Any]) -> None:
        src = own[SOURCE]
        started = time.monotonic()
        try:
            copied = 0
            if job.opts.block:
                prefix = reconcile.volume_prefix(job.server_uid)
                volumes = [
                    (name, size)
                    for name, size in self.deps.storage.volumes(prefix)
                    if not name.endswith("config.iso")  # the target writes its own
                ]
                total = sum(size for _, size in volumes) or 1
                last = [0.0]

                def on_bytes(n: int) -> None:
                    if job.abort_reason is not None:
                        raise errors.HypervisorError(job.abort_reason)
                    now = time.monotonic()
                    if now - last[0] >= PROGRESS_EVERY:
                        last[0] = now
                        done = copied + n
                        own["progress"] = {
                            "dataTotalBytes": total,
                            "dataProcessedBytes": done,
                            "dataRemainingBytes": max(0, total - done),
                            "diskProcessedBytes": done,
                            "elapsedMs": int((now - started) * 1000),
                            "percent": min(99, round(100 * done / total)),
                        }
                        self._write(body, own)

                for name, _size in volumes:
                    copied += self.migrations.copy_volume(
                        self.deps.settings.pool_name, name, job.opts.dest_uri, on_bytes
                    )
            self._clean_source(job.server_uid, job.opts.block)
            elapsed = time.monotonic() - started
            own["progress"] = {
                "dataTotalBytes": copied,
                "dataProcessedBytes": copied,
                "diskProcessedBytes": copied,
                "elapsedMs": int(elapsed * 1000),
                "downtimeMs": 0,
                "percent": 100,
            }
            what = f"{copied / (1 << 20):.1f} MiB of disk copied" if job.opts.block else "shared"
            src.update(
                result=MigrationPhase.Succeeded,
                reason="Migrated",
                message=f"moved to {job.target} while stopped in {elapsed:.1f}s ({what})",
            )
            self._write(body, own)
            log.info("cold-migrated %s to %s: %s", job.server_uid, job.target, what)
        except errors.HypervisorError as exc:
            reason, _, _why = (job.abort_reason or "CopyFailed: ").partition(": ")
            self._fail(
                body,
                own,
                reason,
                f"copying the disks failed: {exc}; the server stays on {self.host}",
            )
        finally:
            with self._lock:
                self.jobs.pop(job.smig_uid, None)
            self._requeue_server(job.server_uid)

    def _run(self, job: Job, body: dict[str, Any], own: dict[str, Any]) -> None:
        failure: list[errors.HypervisorError] = []
        done = threading.Event()

        def go() -> None:
            try:
                self.migrations.migrate(job.server_uid, job.opts)
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
        try:
            while not done.wait(0.25):
                stats = self.migrations.stats(job.server_uid)
                now = time.monotonic()
                if stats is not None and now - last_write >= PROGRESS_EVERY:
                    own["progress"] = progress_of(stats)
                    try:
                        self._write(body, own)
                    except Exception as exc:
                        log.debug("progress write failed: %s", exc)
                    last_write = now
                if job.timeout is not None and not acted and now - started > job.timeout:
                    acted = True
                    paused_by_us = self._on_timeout(job, body)
            self._finish(job, body, own, failure, time.monotonic() - started, paused_by_us)
        except Exception:
            log.exception("migration of %s: finishing failed", job.server_uid)
        finally:
            with self._lock:
                self.jobs.pop(job.smig_uid, None)
            self._requeue_server(job.server_uid)
            meta = body["metadata"]
            self.queue.add((SOURCE, meta["namespace"], meta["name"]))

    def _on_timeout(self, job: Job, body: dict[str, Any]) -> bool:
        assert job.timeout is not None
        ref = smig_ref(body)
        if job.action is CompletionAction.PostCopy and job.opts.post_copy:
            try:
                self.migrations.start_post_copy(job.server_uid)
                self.deps.kube.event(
                    ref, "PostCopy", f"not done after {job.timeout:.0f}s: switched to post-copy"
                )
                return False
            except errors.HypervisorError as exc:
                log.warning("post-copy refused (%s); aborting instead", exc)
        elif job.action is CompletionAction.Pause:
            try:
                self.deps.guests.pause(job.server_uid)
                self.deps.kube.event(
                    ref, "Paused", f"not done after {job.timeout:.0f}s: paused the guest to finish"
                )
                return True
            except errors.HypervisorError as exc:
                log.warning("pausing refused (%s); aborting instead", exc)
        job.abort(f"Timeout: not finished after {job.timeout:.0f}s", self.migrations)
        return False

    def _finish(
        self,
        job: Job,
        body: dict[str, Any],
        own: dict[str, Any],
        failure: list[errors.HypervisorError],
        elapsed: float,
        paused_by_us: bool,
    ) -> None:
        src = own[SOURCE]
        if failure:
            guest = self.deps.guests.get(job.server_uid)
            if paused_by_us and guest is not None and guest.state is State.paused:
                self.deps.guests.unpause(job.server_uid)
            where = (
                f"the guest keeps running on {self.host}"
                if guest is not None and guest.state in (State.running, State.paused)
                else f"the guest is {guest.state.value if guest else 'gone'} on {self.host}"
            )
            reason, _, why = (job.abort_reason or "MigrationFailed: ").partition(": ")
            message = f"{why}; " if why else ""
            message += f"libvirt: {failure[0]}; {where}"
            self._fail(body, own, reason, message)
            log.warning("migration of %s failed: %s", job.server_uid, message)
            return
        stats = self.migrations.completed_stats(job.server_uid)
        if stats is not None:
            own["progress"] = progress_of(stats) | {"percent": 100}
        self._clean_source(job.server_uid, job.opts.block)
        downtime = (own.get("progress") or {}).get("downtimeMs")
        src.update(
            result=MigrationPhase.Succeeded,
            reason="Migrated",
            message=f"moved to {job.target} in {elapsed:.1f}s"
            + (f", downtime {downtime} ms" if downtime is not None else ""),
        )
        self._write(body, own)
        log.info("migrated %s to %s in %.1fs", job.server_uid, job.target, elapsed)

    def _clean_source(self, server_uid: str, block: bool) -> None:
        """After a successful move: the inactive definition, the console log, and the disks
        when they were copied (shared disks are the target's now)."""
        self.deps.guests.undefine(server_uid)
        if block:
            self.deps.storage.delete_volumes(reconcile.volume_prefix(server_uid))
        pathlib.Path(reconcile.console_path(self.deps.settings, server_uid)).unlink(missing_ok=True)

    def _recover(self, body: dict[str, Any], own: dict[str, Any], cancel: str | None) -> None:
        """A migration was started by an earlier run of this agent: find out how it ended."""
        status = body.get("status") or {}
        server_uid = str(status.get("serverUID"))
        src = own[SOURCE]
        if self.migrations.stats(server_uid) is not None:
            meta = body["metadata"]
            self.queue.add((SOURCE, meta["namespace"], meta["name"]), 1.0)
            return  # libvirt still runs it; look again shortly
        guest = self.deps.guests.get(server_uid)
        gone = guest is None or self.migrations.migrated_away(server_uid)
        if gone:
            target = str(status.get("targetNode"))
            endpoint = self._endpoint(target) or {}
            there = peer_running(endpoint["libvirtURI"], server_uid) if endpoint else None
            if there:
                block = not bool((status.get("target") or {}).get("sharedStorage"))
                self._clean_source(server_uid, block)
                src.update(
                    result=MigrationPhase.Succeeded,
                    reason="Migrated",
                    message=f"moved to {target} (finished while the agent was restarting)",
                )
                self._write(body, own)
            else:
                self._fail(
                    body,
                    own,
                    "GuestLost",
                    f"the guest is neither running on {self.host} nor on {target}",
                )
            return
        reason, _, why = (cancel or "AgentRestarted: the agent restarted mid-way").partition(": ")
        self._fail(body, own, reason, f"{why}; the guest keeps running on {self.host}")

    # ------------------------------------------------------------------ target
    def reconcile_target(self, key: tuple[str, str], body: dict[str, Any] | None) -> None:
        if body is None:
            with self._lock:
                record = self._prepared.pop(key, None)
            if record is not None:
                self._clean_target(*record)
            return
        meta, status = body["metadata"], body.get("status") or {}
        phase = status.get("phase")
        server_uid = status.get("serverUID")
        if not server_uid:
            return
        own = self._mine(body, TARGET)
        tgt = own[TARGET]
        if phase == MigrationPhase.Succeeded:
            with self._lock:
                self._prepared.pop(key, None)
                self._own.pop(meta["uid"], None)
            return
        if phase == MigrationPhase.Failed:
            with self._lock:
                self._prepared.pop(key, None)
            if not tgt.get("cleanedUp"):
                self._clean_target(server_uid, bool(tgt.get("sharedStorage")))
                tgt["cleanedUp"] = True
                self._write(body, own)
            return
        if phase == MigrationPhase.Running:
            # Watch for the guest's arrival: if the source host dies, this is how the
            # controller learns where the guest ended up.
            if tgt.get("arrived"):
                return
            if self.migrations.arrived(server_uid):
                tgt["arrived"] = True
                self._write(body, own)
            else:
                self.queue.add((TARGET, *key), ARRIVAL_POLL)
            return
        if phase not in (MigrationPhase.PreChecking, MigrationPhase.Preparing):
            return
        src = status.get("source") or {}
        if not tgt.get("checked"):
            if not src.get("storageProbe"):
                return  # the source has not reported yet
            ok, reason, message, shared = self._check(src)
            tgt.update(
                checked=True, compatible=ok, reason=reason, message=message, sharedStorage=shared
            )
            self._write(body, own)
            if not ok:
                return
        if tgt.get("compatible") and not tgt.get("prepared"):
            self._prepare(key, body, own, server_uid)

    def _check(self, src: dict[str, Any]) -> tuple[bool, str, str, bool]:
        if self.deps.virt_type is VirtType.test:
            return False, "MigrationUnsupported", "libvirt's test driver cannot migrate", False
        found = []
        cpu = src.get("guestCPU")
        if cpu:
            ok, said = self.migrations.compare_cpu(
                cpu, str(src.get("arch") or "x86_64"), self.deps.virt_type.value
            )
            if not ok:
                return False, "CPUIncompatible", f"{self.host}: {said}", False
            found.append(said)
        name, _, token = str(src.get("storageProbe", "")).partition(":")
        probe = pathlib.Path(self.deps.settings.instances_dir) / name
        try:
            shared = bool(token) and probe.read_text() == token
        except OSError:
            shared = False
        found.append("instances folder shared with the source" if shared else "disks are copied")
        return True, "Compatible", "; ".join(found), shared

    def _prepare(
        self, key: tuple[str, str], body: dict[str, Any], own: dict[str, Any], server_uid: str
    ) -> None:
        tgt = own[TARGET]
        server = self.deps.kube.get_or_none(
            kube.ObjectRef("Server", constants.SERVERS, body["spec"]["serverRef"], key[0])
        )
        if server is None or server["metadata"]["uid"] != server_uid:
            tgt.update(compatible=False, reason="ServerNotFound", message="the Server is gone")
            self._write(body, own)
            return
        with self._lock:
            self._prepared[key] = (server_uid, bool(tgt.get("sharedStorage")))
        try:
            reconcile.domain_config(self.deps, server)  # images, disks, config drive
        except reconcile.Permanent as exc:
            tgt.update(compatible=False, reason=exc.reason, message=f"{self.host}: {exc}")
            self._write(body, own)
            return
        # reconcile.Retry (an image server down, say) propagates: the step is tried again
        # with backoff, and the controller gives up after its preparation timeout.
        tgt["prepared"] = True
        self._write(body, own)

    def _clean_target(self, server_uid: str, shared: bool) -> None:
        """Remove what a failed migration left here, unless the Server is bound here."""
        listing = self.deps.kube.custom.list_cluster_custom_object(
            constants.GROUP,
            constants.VERSION,
            constants.SERVERS,
            field_selector=f"{constants.NODE_FIELD}={self.host}",
        )
        for body in kube.as_dict(listing).get("items", []):
            if body["metadata"]["uid"] == server_uid:
                return
        guest = self.deps.guests.get(server_uid)
        if guest is not None:
            log.info("removing the domain a failed migration left: %s", guest.name)
            self.deps.guests.destroy(server_uid, force=True)
            self.deps.guests.undefine(server_uid)
        if not shared:
            self.deps.storage.delete_volumes(reconcile.volume_prefix(server_uid))
        pathlib.Path(reconcile.console_path(self.deps.settings, server_uid)).unlink(missing_ok=True)
