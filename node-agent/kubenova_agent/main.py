"""``kubenova-agent``: the node agent's process — an informer of this host's Servers, workers
that reconcile them, libvirt domain events, an orphan sweep and the capacity heartbeat."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from kubenova_agent import (
    bootwatch,
    capacity,
    heartbeat,
    hosttools,
    images,
    informer,
    migrations,
    networking,
    reconcile,
    settings,
    workqueue,
)
from kubenova_agent import metrics as agent_metrics
from kubenova_agent.images import gc
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_agent.libvirt.cpucheck import CpuChecker
from kubenova_agent.libvirt.guest import Guests
from kubenova_agent.libvirt.host import Host
from kubenova_agent.libvirt.migration import Migrations
from kubenova_agent.libvirt.storage import Storage
from kubenova_api import common, constants, health, kube, metrics
from kubenova_api.kube import ObjectRef, RetryLater
from kubenova_api.resources import Flavor, Hypervisor, MigrationEndpoint, Server

log = logging.getLogger("kubenova_agent")

ECHO_WAIT_SECONDS = 30.0
"""How long a reconcile waits for the watch to bring back its own last write to a Server
before it acts on the copy it has. The write changed the object, so a newer copy comes (or
the object goes); this only bounds a pathological wait. Under a burst the watch lagged more
than 5 s, and acting on the old copy then (a refused PATCH, a re-read) made it lag more."""
ECHO_RECHECK_SECONDS = 0.1
LEASE_BEATS = 4
"""The heartbeat Lease's duration in beats (the kubelet's: 40 s, renewed every 10 s)."""
RENEW_EARLY = 0.9
"""A beat that comes a little early (its wait is cut by a guest change) still renews."""
COALESCE_SECONDS = 2.0
"""Guest changes are gathered this long before the Hypervisor status is written, after a quiet
spell (longer in a burst: ``capacity.Pacer``)."""


def resolve_virt_type(wanted: str, host: Host) -> domain_xml.VirtType:
    if wanted != "auto":
        return domain_xml.VirtType(wanted)
    if host.uri.startswith("test:"):
        return domain_xml.VirtType.test
    return domain_xml.VirtType.kvm if host.facts().kvm_available else domain_xml.VirtType.qemu


class Agent:
    """All of one host's agent, startable and stoppable in-process (tests host many at once)."""

    def __init__(
        self,
        cfg: settings.AgentSettings,
        k: kube.Kube | None = None,
        watches: informer.Watches | None = None,
    ) -> None:
        self.settings = cfg
        self.kube = k or kube.Kube(
            kube.api_client(cfg.kubeconfig), f"kubenova-agent/{cfg.host_name}", "kubenova-agent"
        )
        self.watches = watches or informer.OwnWatches(self.kube)
        """Where the caches come from: watches of this agent's own unless it shares a process
        with others (:class:`kubenova_agent.informer.SharedWatches`)."""
        self.queue: workqueue.WorkQueue[informer.Key] = workqueue.WorkQueue()
        self.host = Host(
            cfg.libvirt_uri, on_event=self._on_domain_event, on_reconnect=self._on_libvirt_back
        )
        self.guests = Guests(self.host)
        self.storage = Storage(self.host, cfg.pool_name, cfg.instances_dir)
        self.informer = self.watches.hosted(
            Server, cfg.host_name, self._server_changed, constants.NODE_FIELD
        )
        self.networks = networking.NetworkAgent(cfg, self.kube, self.informer.items, self.watches)
        self.migrations = Migrations(self.host)
        self.migrator: migrations.MigrationAgent | None = None
        self._baseline: tuple[float, tuple[str, ...], str | None] = (0.0, (), None)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._capacity_due = threading.Event()
        self._echoes: dict[str, tuple[str, float]] = {}
        """uid -> (resourceVersion a reconcile that wrote to the Server started from, when)."""
        self.swept = threading.Event()
        """Set once the first sweep of stale domains is done and the workers run."""
        self.deps: reconcile.Deps | None = None
        self.metrics = agent_metrics.AgentMetrics(lambda: len(self.queue), cfg.images_dir)

    def start(self) -> None:
        cfg = self.settings
        virt_type = resolve_virt_type(cfg.virt_type, self.host)
        self.storage.ensure_pool()
        image_cache = images.ImageCache(cfg.images_dir, cfg.image_settings)
        for name in image_cache.clean_partial():
            log.info("removed a partial download left behind: %s", name)
        self.deps = reconcile.Deps(
            settings=cfg,
            kube=self.kube,
            guests=self.guests,
            storage=self.storage,
            images=image_cache,
            virt_type=virt_type,
            guest_cpu=self._guest_cpu,
            nics=self.networks.nics,
            release_nics=self.networks.forget,
            # The test driver's guests have no console (and boot nothing) to watch.
            boots=(
                bootwatch.BootWatch(cfg.boot_timeout_seconds)
                if virt_type is not domain_xml.VirtType.test
                else None
            ),
            cpus=CpuChecker(self.host),
        )
        # Unused cached images go, never one that a volume, a domain or an instance file names.
        self.image_gc = gc.Collector(
            image_cache,
            [
                self.storage.backing_files,
                self.host.domain_files,
                gc.backing_files_in(cfg.instances_dir),
            ],
            cfg.image_gc_min_unused_seconds,
            cfg.image_gc_interval_seconds,
        )
        self.migrator = migrations.MigrationAgent(
            self.deps, self.kube, self.migrations, self._requeue_uid, self.watches
        )
        self.deps.hold = self.migrator.holds
        self.deps.moved_away = self.migrator.moved_away
        capacity.ensure_hypervisor(self.kube, cfg.host_name)
        host_cpu = None
        if virt_type is not domain_xml.VirtType.test:
            host_cpu = self.migrations.host_model_cpu(virt_type.value)
        self.publisher = capacity.CapacityPublisher(
            cfg,
            self.kube,
            self.host,
            self.storage,
            self.informer.items,
            virt_type.value,
            MigrationEndpoint(libvirtURI=cfg.peer_uri, address=cfg.migration_target_address),
            host_cpu,
            networking.host_networking(cfg),
        )
        # Networks before the guests: a guest's NICs need its networks known.
        self.networks.start(self._spawn)
        self.networks.networks.synced.wait(30)
        self.networks.providers.synced.wait(30)
        # Migrations first: a guest that is moving must be known as such before the Server
        # reconciler looks at it.
        self._spawn("migrations-out", self.migrator.as_source.run)
        self._spawn("migrations-in", self.migrator.as_target.run)
        self.migrator.as_source.synced.wait(30)
        self.migrator.as_target.synced.wait(30)
        for i in range(cfg.migration_workers):
            self._spawn(f"migration-{i}", self._migration_work)
        self._spawn("informer", self.informer.run)
        # Nothing is started before the stale domains are gone: a host that comes back after it
        # was fenced finds guests that now run elsewhere (see kubenova_operator.fencing).
        self._spawn("startup", self._start_workers)
        self._spawn("heartbeat", self._heartbeat)
        self._spawn("image-gc", lambda: self.image_gc.run(self._stop))
        log.info(
            "agent for host %s started (libvirt %s, virt type %s)",
            cfg.host_name,
            cfg.libvirt_uri,
            virt_type.value,
        )

    def _start_workers(self) -> None:
        """Sweep the host (retrying until the API server answers), then start the workers."""
        delay = 0.5
        while not self._stop.is_set():
            self.informer.synced.wait(5.0)
            if not self.informer.synced.is_set():
                continue
            try:
                self.sweep_orphans()
                break
            except Exception as exc:
                log.warning(
                    "sweeping stale domains failed (%s); no guest is started until it "
                    "works; again in %.0fs",
                    exc,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        if self._stop.is_set():
            return
        self.swept.set()
        for i in range(self.settings.workers):
            self._spawn(f"worker-{i}", self._work)
        self._spawn("resync", self._resync)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"{self.settings.host_name}-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _server_changed(self, key: informer.Key) -> None:
        self.queue.add(key)
        self.networks.poke()

    def _migration_work(self) -> None:
        assert self.migrator is not None
        self.migrator.work(self._stop)

    def _requeue_uid(self, uid: str) -> None:
        key = self.informer.key_for_uid(uid)
        if key is not None:
            self.queue.add(key)

    def _guest_cpu(self, server: Server) -> str | None:
        """The CPU a new guest gets: the Flavor's ``hw:cpu_mode``/``hw:cpu_model`` extra specs,
        else the agent's ``--cpu-mode``; ``cluster`` is the baseline of every enabled host."""
        cfg = self.settings
        assert self.deps is not None
        if self.deps.virt_type is domain_xml.VirtType.test:
            return None
        flavor = self.kube.get(Flavor, server.spec.flavorRef)
        extra = flavor.spec.extraSpecs if flavor is not None else {}
        model = extra.get("hw:cpu_model") or cfg.cpu_model
        mode = extra.get("hw:cpu_mode") or ("custom" if extra.get("hw:cpu_model") else None)
        mode = mode or cfg.cpu_mode
        if mode == "default":
            return None
        if mode == "cluster":
            return self._cluster_cpu()
        return domain_xml.cpu_element(mode, model)

    def _cluster_cpu(self) -> str | None:
        """libvirt's baseline of the CPUs of every enabled host that is up (cached 30 s)."""
        cpus = []
        for hv in self.kube.list_of(Hypervisor):
            up = kube_condition(hv, "Up")
            if hv.spec.disabled or (up is not None and up.status == "False"):
                continue
            if hv.status.guestCPU:
                cpus.append(hv.status.guestCPU)
        key = tuple(sorted(cpus))
        at, cached_key, cached = self._baseline
        if cached_key == key and time.monotonic() - at < 30:
            return cached
        assert self.deps is not None
        try:
            out: str | None = domain_xml.guest_cpu_of_baseline(
                self.migrations.baseline(list(key), self.deps.virt_type.value)
            )
        except errors.HypervisorError as exc:
            # An older libvirt may not know a newer host's model: this host's own CPU is
            # then the most any guest started here can have.
            own = self.migrations.host_model_cpu(self.deps.virt_type.value)
            log.warning("cluster CPU baseline failed here (%s); using this host's CPU", exc)
            out = domain_xml.guest_cpu_of_baseline(own) if own else None
        self._baseline = (time.monotonic(), key, out)
        return out

    def stop(self) -> None:
        self._stop.set()
        if self.migrator is not None:
            self.migrator.stop()
        self.informer.stop()
        self.networks.stop()
        self.queue.close()
        self._capacity_due.set()
        for t in self._threads:
            t.join(timeout=10)
        self.kube.flush_events(timeout=2.0)  # what it reported last is not lost
        self.host.close()

    def _on_domain_event(self, uuid: str, event: str) -> None:
        log.debug("domain %s: %s", uuid, event)
        key = self.informer.key_for_uid(uuid)
        if key is not None:
            self.queue.add(key)
        self._capacity_due.set()

    def _on_libvirt_back(self) -> None:
        """libvirt is reachable again (libvirtd restarted, say): every Server of this host is
        looked at now, not at the next resync; the Hypervisor status is written again too."""
        self._enqueue_all()
        self._capacity_due.set()

    def _enqueue_all(self) -> None:
        for server in self.informer.items():
            self.queue.add(server.key)

    def _work(self) -> None:
        """A worker: a key that fails, however often, costs retries with capped back-off and
        never the worker (:meth:`workqueue.WorkQueue.process_next` catches everything)."""
        while self.queue.process_next(self._reconcile_key, self._failed):
            self._capacity_due.set()

    def _reconcile_key(self, key: informer.Key) -> float | None:
        assert self.deps is not None
        server = self.informer.get(key)
        if server is None:
            return None
        uid, seen = server.metadata.uid, server.metadata.resourceVersion
        echo = self._echoes.get(uid)
        if echo is not None:
            version, since = echo
            if version == seen and time.monotonic() - since < ECHO_WAIT_SECONDS:
                # The cached copy is the one the last reconcile started from: its own write
                # has not come back through the watch yet. Acting on it would repeat what
                # was done (a finalizer added again is a refused PATCH and a re-read).
                return ECHO_RECHECK_SECONDS
            self._echoes.pop(uid, None)
        before = self.kube.last_written.get(uid)
        try:
            again = reconcile.reconcile_server(self.deps, server)
        finally:  # a reconcile that wrote and then failed must not be retried from this copy
            after = self.kube.last_written.get(uid)
            # A write that changed nothing leaves the resourceVersion as it was: no event will
            # come, and the copy is current.
            if after not in (before, seen):
                self._expect_echo(uid, seen)
        self.metrics.reconciles.inc()
        return again

    def _expect_echo(self, uid: str, version: str) -> None:
        now = time.monotonic()
        if len(self._echoes) > 256:  # those of deleted Servers, never cleared by a read
            for old, (_, t) in list(self._echoes.items()):  # one step under the GIL
                if now - t > ECHO_WAIT_SECONDS:
                    self._echoes.pop(old, None)
        self._echoes[uid] = (version, now)

    def _failed(self, key: informer.Key, exc: Exception, delay: float) -> None:
        self.metrics.failed(exc)
        transient = isinstance(exc, RetryLater) or getattr(exc, "transient", True)
        log.log(
            logging.WARNING if transient else logging.ERROR,
            "reconciling %s/%s failed (%s); again in %.1fs",
            key[0],
            key[1],
            exc,
            delay,
            exc_info=not transient,
        )

    def _heartbeat(self) -> None:
        """Renew the heartbeat Lease every beat; write the Hypervisor status when a figure in
        it changed, every ``status_report_seconds`` anyway, and every beat while the Lease
        cannot be written here (no namespace, no permission: then the status's own time is the
        heartbeat, as before Leases). An API server that refuses the renewal for load gets
        no larger write instead: it is tried again next beat."""
        cfg = self.settings
        lease = (
            heartbeat.HeartbeatLease(
                self.kube.api,
                cfg.heartbeat_namespace,
                cfg.host_name,
                LEASE_BEATS * cfg.heartbeat_seconds,
            )
            if cfg.heartbeat_namespace
            else None
        )
        written: dict[str, object] | None = None
        written_at = 0.0
        # Until the Lease is known to work, the status carries the heartbeat too.
        renewal = heartbeat.Renewal.unavailable
        renewed_at = -float("inf")
        pacer = capacity.Pacer(COALESCE_SECONDS, cfg.heartbeat_seconds)
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                status = self.publisher.compute()
                figures = status.model_dump(mode="json", exclude={"lastHeartbeatTime"})
                report_due = now - written_at >= cfg.status_report_seconds
                fallback = renewal is heartbeat.Renewal.unavailable
                changed = figures != written
                if fallback or changed or report_due:
                    self.publisher.write(status)
                    if changed:
                        pacer.wrote(now)
                    written, written_at = figures, now
                    self.metrics.status_writes.inc()
            except Exception as exc:
                log.warning("publishing capacity failed: %s", exc)
            # After the status, and whether or not it could be written: the Lease says the
            # agent is alive (an API server refusing a large status for load must not make a
            # host look dead). Once a beat: guest changes wake this loop every 2 s in a
            # burst, and renewing then would be writes that say nothing new.
            if lease is not None and (
                renewal is not heartbeat.Renewal.renewed
                or now - renewed_at >= cfg.heartbeat_seconds * RENEW_EARLY
            ):
                renewal = lease.renew()
                renewed_at = now
                self.metrics.lease_renewals.labels(renewal.value).inc()
            self._capacity_due.wait(cfg.heartbeat_seconds)
            self._capacity_due.clear()
            # Coalesce bursts of guest changes into one write; longer while they keep coming.
            self._stop.wait(pacer.delay(time.monotonic()))

    def _resync(self) -> None:
        self.informer.synced.wait()
        while not self._stop.wait(self.settings.resync_seconds):
            try:
                self.sweep_orphans()
            except Exception as exc:
                log.warning("orphan sweep failed: %s", exc)
            self._enqueue_all()

    def sweep_orphans(self) -> list[str]:
        """Remove kubenova domains whose Server no longer exists (a deleted or lost object).

        A domain is removed only when a fresh read from the API server confirms that no
        Server with its UID is bound to this host."""
        assert self.deps is not None
        mine = {
            s.uid for s in self.informer.items() if s.status.nodeName == self.settings.host_name
        }
        # Only a domain the watch cache knows no Server for is a suspect; only a suspect costs
        # the fresh read (a thousand hosts each listing every minute was a LIST per 60 ms
        # over all the cluster's Servers, to confirm what the cache already said).
        domains = [d for d in self.host.domains() if d.owner is not None and d.uuid not in mine]
        if not domains:
            return []
        bound = self.kube.list_of(
            Server, field_selector=f"{constants.NODE_FIELD}={self.settings.host_name}"
        )
        live = {server.uid for server in bound}
        removed = []
        for dom in domains:
            if dom.uuid in live:
                continue
            if self.migrator is not None and self.migrator.incoming(dom.uuid):
                continue  # arriving: the migration decides its fate
            assert dom.owner is not None
            server = self._server_of(dom.owner)
            node = server.status.nodeName if server is not None else None
            elsewhere = node if node and node != self.settings.host_name else None
            fenced = server is not None and server.status.evacuatedFrom == self.settings.host_name
            leaving = self.migrator is not None and self.migrator.holds(dom.uuid)
            if elsewhere is None and not fenced and leaving:
                continue  # leaving: the migration decides its fate
            try:
                if fenced:
                    assert server is not None
                    self._remove_stale(dom.uuid, server)
                elif elsewhere is not None:
                    # Left behind by a move (an agent that died at the wrong moment): the
                    # Server lives on another host, and its disks may be that host's too
                    # (shared storage), so only this host's definition goes.
                    log.warning(
                        "removing the definition of %s left here: its Server runs on %s (its "
                        "disks are kept: they may be shared with that host)",
                        dom.name,
                        elsewhere,
                    )
                    reconcile.forget_domain(self.deps, dom.uuid)
                else:
                    log.warning(
                        "removing orphaned domain %s (%s): its Server is gone", dom.name, dom.owner
                    )
                    reconcile.teardown(self.deps, dom.uuid)
                removed.append(dom.uuid)
            except errors.HypervisorError as exc:
                log.warning("could not remove orphan %s: %s", dom.name, exc)
        return removed

    def _server_of(self, owner: domain_xml.Owner) -> Server | None:
        """The domain's Server, read fresh, if it still exists (the same UID)."""
        server = self.kube.get(Server, owner.name, owner.namespace)
        return server if server is not None and server.uid == owner.uid else None

    def _remove_stale(self, uid: str, server: Server) -> None:
        """A guest of this host's Server that was taken away while the host was out of service:
        never started again. Its disks go too once the Server was rebuilt from its image
        elsewhere; while that is not known (shared storage, not rebuilt yet), they are kept."""
        assert self.deps is not None
        rebuilt = server.status.diskRebuilt is True
        if rebuilt:
            reconcile.teardown(self.deps, uid)
        else:
            reconcile.forget_domain(self.deps, uid)
        where = server.status.nodeName or "no host yet"
        what = "its domain and disks" if rebuilt else "its domain (its disks are kept: shared?)"
        message = (
            f"host {self.settings.host_name} came back after it was out of service: removed "
            f"{what} there before starting anything; the server runs on {where}"
        )
        log.warning("%s: %s", server.full_name, message)
        self.kube.event(ObjectRef.to(server), "StaleDomainRemoved", message, warning=True)


def kube_condition(hv: Hypervisor, type_: str) -> common.Condition | None:
    return common.get_condition(hv.status.conditions, type_)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack
    cfg = settings.from_args(argv)
    lacking = hosttools.missing(
        networking=cfg.network_plumbing and networking.host_networking(cfg) is not None
    )
    if lacking:
        log.error("cannot start: missing host programs: %s", hosttools.describe(lacking))
        return 2
    agent = Agent(cfg)
    # Ready once this host's Servers are listed (its guests are then looked after).
    health.serve(cfg.health_address, alive=lambda: True, ready=agent.informer.synced.is_set)
    metrics.serve(cfg.metrics_address, agent.metrics.registry)
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
