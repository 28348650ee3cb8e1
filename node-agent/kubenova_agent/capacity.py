"""The host's Hypervisor object (Nova's ``update_available_resource``): capacity read from
libvirt, what this host's Servers claim, the CPU, versions and a heartbeat."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.host import Host, HostFacts
from kubenova_agent.libvirt.storage import Storage
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, constants, kube

log = logging.getLogger(__name__)

GIB = 1 << 30
FACTS_REFRESH_SECONDS = 300.0


def hypervisor_ref(host_name: str) -> kube.ObjectRef:
    return kube.ObjectRef("Hypervisor", constants.HYPERVISORS, host_name)


def ensure_hypervisor(k: kube.Kube, host_name: str) -> None:
    """Create this host's Hypervisor (with an empty spec an admin may fill) if it is missing."""
    body = {
        "apiVersion": constants.API_VERSION,
        "kind": "Hypervisor",
        "metadata": {"name": host_name},
        "spec": {},
    }
    try:
        k.custom.create_cluster_custom_object(
            constants.GROUP, constants.VERSION, constants.HYPERVISORS, body
        )
        log.info("registered Hypervisor %s", host_name)
    except ApiException as exc:
        if exc.status != 409:
            raise


def used_by(servers: list[dict[str, Any]]) -> dict[str, int]:
    """Resources the Servers bound here claim, from the flavor each was scheduled with."""
    used = {"vcpus": 0, "memoryMiB": 0, "diskGiB": 0}
    for server in servers:
        flavor = (server.get("status") or {}).get("flavor") or {}
        for key in used:
            used[key] += int(flavor.get(key, 0))
    return used


class CapacityPublisher:
    def __init__(
        self,
        settings: AgentSettings,
        k: kube.Kube,
        host: Host,
        storage: Storage,
        servers: Callable[[], list[dict[str, Any]]],
        virt_type: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._extra = dict(extra or {})
        """Fields that do not change while the agent runs (migration endpoint, guest CPU)."""
        self._settings = settings
        self._kube = k
        self._host = host
        self._storage = storage
        self._servers = servers
        self._virt_type = virt_type
        self._facts: HostFacts | None = None
        self._facts_at = 0.0
        self._ready: dict[str, Any] | None = None

    def facts(self) -> HostFacts:
        """The host's CPU, size and versions; read again every few minutes (they rarely change,
        and the first read makes libvirtd probe QEMU, which takes seconds)."""
        now = time.monotonic()
        if self._facts is None or now - self._facts_at > FACTS_REFRESH_SECONDS:
            self._facts = self._host.facts()
            self._facts_at = now
        return self._facts

    def _condition(self, status: str, reason: str, message: str) -> dict[str, Any]:
        old = [self._ready] if self._ready else []
        self._ready = common.set_condition(old, "Ready", status, reason, message)[0]  # type: ignore[arg-type]
        return self._ready

    def publish(self) -> dict[str, Any]:
        """Compute and write the Hypervisor status; returns what was written."""
        s = self._settings
        status: dict[str, Any] = {
            "lastHeartbeatTime": common.timestamp(),
            "reserved": {
                "vcpus": s.reserved_vcpus,
                "memoryMiB": s.reserved_memory_mib,
                "diskGiB": s.reserved_disk_gib,
            },
            "used": used_by(self._servers()),
            "virtType": self._virt_type,
            **self._extra,
        }
        try:
            facts = self.facts()
            pool = self._storage.usage()
            running = sum(1 for d in self._host.domains() if d.active and d.owner is not None)
        except errors.HypervisorError as exc:
            log.warning("libvirt unreachable while publishing capacity: %s", exc)
            status["conditions"] = [
                self._condition("False", "LibvirtUnreachable", f"libvirt at {s.libvirt_uri}: {exc}")
            ]
            self._kube.apply_status(hypervisor_ref(s.host_name), status)
            return status
        status.update(
            {
                "hostUUID": facts.uuid,
                "hypervisorType": facts.hypervisor_type,
                "hypervisorVersion": facts.hypervisor_version,
                "libvirtVersion": facts.libvirt_version,
                "cpuInfo": {
                    "arch": facts.cpu.arch,
                    "model": facts.cpu.model,
                    "vendor": facts.cpu.vendor,
                    "features": list(facts.cpu.features),
                    "sockets": facts.cpu.sockets,
                    "cores": facts.cpu.cores,
                    "threads": facts.cpu.threads,
                },
                "guestArchitectures": list(facts.guest_archs),
                "total": {
                    "vcpus": facts.cpus,
                    "memoryMiB": facts.memory_mib,
                    "diskGiB": pool.capacity_bytes // GIB,
                },
                "free": {
                    key: max(0, total - status["reserved"][key] - status["used"][key])
                    for key, total in (
                        ("vcpus", facts.cpus),
                        ("memoryMiB", facts.memory_mib),
                        ("diskGiB", pool.capacity_bytes // GIB),
                    )
                },
                "runningVMs": running,
                "conditions": [
                    self._condition("True", "AgentReady", f"libvirt {facts.libvirt_version}")
                ],
            }
        )
        self._kube.apply_status(hypervisor_ref(s.host_name), status)
        return status
