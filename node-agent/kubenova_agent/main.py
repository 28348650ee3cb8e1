"""``kubenova-agent``: the node agent's process — an informer of this host's Servers, workers
that reconcile them, libvirt domain events, an orphan sweep and the capacity heartbeat."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from types import FrameType

from kubenova_agent import capacity, images, informer, reconcile, settings, workqueue
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_agent.libvirt.guest import Guests
from kubenova_agent.libvirt.host import Host
from kubenova_agent.libvirt.storage import Storage
from kubenova_api import constants, kube

log = logging.getLogger("kubenova_agent")


def resolve_virt_type(wanted: str, host: Host) -> domain_xml.VirtType:
    if wanted != "auto":
        return domain_xml.VirtType(wanted)
    if host.uri.startswith("test:"):
        return domain_xml.VirtType.test
    return domain_xml.VirtType.kvm if host.facts().kvm_available else domain_xml.VirtType.qemu


class Agent:
    """All of one host's agent, startable and stoppable in-process (tests host many at once)."""

    def __init__(self, cfg: settings.AgentSettings, k: kube.Kube | None = None) -> None:
        self.settings = cfg
        self.kube = k or kube.Kube(
            kube.api_client(cfg.kubeconfig), f"kubenova-agent/{cfg.host_name}", "kubenova-agent"
        )
        self.queue: workqueue.WorkQueue[informer.Key] = workqueue.WorkQueue()
        self.host = Host(cfg.libvirt_uri, on_event=self._on_domain_event)
        self.guests = Guests(self.host)
        self.storage = Storage(self.host, cfg.pool_name, cfg.instances_dir)
        self.informer = informer.ServerInformer(self.kube, cfg.host_name, self.queue.add)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._capacity_due = threading.Event()
        self.deps: reconcile.Deps | None = None

    def start(self) -> None:
        cfg = self.settings
        virt_type = resolve_virt_type(cfg.virt_type, self.host)
        self.storage.ensure_pool()
        image_cache = images.ImageCache(cfg.images_dir)
        for name in image_cache.clean_partial():
            log.info("removed a partial download left behind: %s", name)
        self.deps = reconcile.Deps(
            settings=cfg,
            kube=self.kube,
            guests=self.guests,
            storage=self.storage,
            images=image_cache,
            virt_type=virt_type,
        )
        capacity.ensure_hypervisor(self.kube, cfg.host_name)
        self.publisher = capacity.CapacityPublisher(
            cfg, self.kube, self.host, self.storage, self.informer.items, virt_type.value
        )
        self._spawn("informer", self.informer.run)
        for i in range(cfg.workers):
            self._spawn(f"worker-{i}", self._work)
        self._spawn("heartbeat", self._heartbeat)
        self._spawn("resync", self._resync)
        log.info(
            "agent for host %s started (libvirt %s, virt type %s)",
            cfg.host_name,
            cfg.libvirt_uri,
            virt_type.value,
        )

    def _spawn(self, name: str, target: object) -> None:
        t = threading.Thread(target=target, name=f"{self.settings.host_name}-{name}", daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.informer.stop()
        self.queue.close()
        self._capacity_due.set()
        for t in self._threads:
            t.join(timeout=10)
        self.host.close()

    def _on_domain_event(self, uuid: str, event: str) -> None:
        log.debug("domain %s: %s", uuid, event)
        key = self.informer.key_for_uid(uuid)
        if key is not None:
            self.queue.add(key)
        self._capacity_due.set()

    def _work(self) -> None:
        assert self.deps is not None
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                body = self.informer.get(key)
                if body is not None:
                    again = reconcile.reconcile_server(self.deps, body)
                    if again is not None:
                        self.queue.add(key, again)
                self.queue.forget(key)
            except Exception as exc:
                transient = getattr(exc, "transient", True)
                delay = self.queue.backoff(key)
                level = logging.WARNING if transient else logging.ERROR
                log.log(
                    level,
                    "reconciling %s/%s failed (%s); again in %.1fs",
                    key[0],
                    key[1],
                    exc,
                    delay,
                    exc_info=not transient,
                )
            finally:
                self.queue.done(key)
                self._capacity_due.set()

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.publish()
            except Exception as exc:
                log.warning("publishing capacity failed: %s", exc)
            self._capacity_due.wait(self.settings.heartbeat_seconds)
            self._capacity_due.clear()
            # Coalesce bursts of guest changes into one write.
            self._stop.wait(min(2.0, self.settings.heartbeat_seconds))

    def _resync(self) -> None:
        self.informer.synced.wait()
        while not self._stop.is_set():
            try:
                self.sweep_orphans()
            except Exception as exc:
                log.warning("orphan sweep failed: %s", exc)
            for body in self.informer.items():
                self.queue.add(informer.key_of(body))
            self._stop.wait(self.settings.resync_seconds)

    def sweep_orphans(self) -> list[str]:
        """Remove kubenova domains whose Server no longer exists (a deleted or lost object).

        A domain is removed only when a fresh read from the API server confirms that no
        Server with its UID is bound to this host."""
        assert self.deps is not None
        domains = [d for d in self.host.domains() if d.owner is not None]
        if not domains:
            return []
        resp = self.kube.custom.list_cluster_custom_object(
            constants.GROUP,
            constants.VERSION,
            constants.SERVERS,
            field_selector=f"{constants.NODE_FIELD}={self.settings.host_name}",
        )
        live = {item["metadata"]["uid"] for item in kube.as_dict(resp).get("items", [])}
        removed = []
        for dom in domains:
            if dom.uuid in live:
                continue
            log.warning("removing orphaned domain %s (%s): its Server is gone", dom.name, dom.owner)
            try:
                reconcile.teardown(self.deps, dom.uuid)
                removed.append(dom.uuid)
            except errors.HypervisorError as exc:
                log.warning("could not remove orphan %s: %s", dom.name, exc)
        return removed


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack
    cfg = settings.from_args(argv)
    agent = Agent(cfg)
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
