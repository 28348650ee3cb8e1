"""The host's Hypervisor object (Nova's ``update_available_resource``): capacity read from
libvirt, what this host's Servers claim, the CPU, versions and a heartbeat."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from kubenova_agent.driver import Storage
from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.host import Host, HostFacts
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, kube
from kubenova_api.common import Condition, ConditionStatus, ObjectMeta
from kubenova_api.kube import ObjectRef
from kubenova_api.networks import HostNetworking
from kubenova_api.resources import (
    CpuInfo,
    Hypervisor,
    HypervisorSpec,
    HypervisorStatus,
    MigrationEndpoint,
    Resources,
    Server,
)

log = logging.getLogger(__name__)

GIB = 1 << 30
FACTS_REFRESH_SECONDS = 300.0
UNREACHABLE_AFTER = 2
"""Failed reads of libvirt in a row before the host is reported unreachable. One failed call
(an RPC that timed out, a refusal while libvirtd was busy) is not a host that is gone, and
``Ready=False`` makes the controller count the host down at once: until the next beat the
figures of the last good read stand (Nova's service group does not mark a compute service
down for one missed report either)."""


def hypervisor_ref(host_name: str) -> ObjectRef:
    return ObjectRef.named(Hypervisor, host_name)


def ensure_hypervisor(k: kube.Kube, host_name: str) -> None:
    """Create this host's Hypervisor (with an empty spec an admin may fill) if it is missing."""
    try:
        k.create(Hypervisor(metadata=ObjectMeta(name=host_name), spec=HypervisorSpec()))
        log.info("registered Hypervisor %s", host_name)
    except ApiException as exc:
        if exc.status != 409:
            raise


class Pacer:
    """How long the agent gathers guest changes before it writes the Hypervisor status again:
    ``first`` seconds after a quiet spell (no write for two beats), so one change is published
    within seconds; twice as long after each write of a burst, up to ``most`` (a beat), so a
    host taking a burst of guests writes a few times rather than once per guest. The scheduler
    does not wait for these figures (it keeps its own claims); people and the OpenStack API
    read them."""

    def __init__(self, first: float, most: float) -> None:
        self._first = min(first, most)
        self._most = most
        self._last: float | None = None
        self._delay = self._first

    def _quiet(self, now: float) -> bool:
        # Two beats: in a burst the writes come a beat apart (and a little more).
        return self._last is None or now - self._last >= 2 * self._most

    def delay(self, now: float) -> float:
        """Seconds to gather changes, from ``now`` (monotonic), before the next write."""
        return self._first if self._quiet(now) else self._delay

    def wrote(self, now: float) -> None:
        """A status write that published a change happened at ``now`` (monotonic seconds)."""
        self._delay = self._first if self._quiet(now) else min(self._delay * 2, self._most)
        self._last = now


def boot_time(stat: str = "/proc/stat") -> dt.datetime | None:
    """When the host booted: the kernel's ``btime`` (the host's own, in a container too)."""
    try:
        with open(stat, encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return dt.datetime.fromtimestamp(int(line.split()[1]), dt.UTC)
    except (OSError, ValueError):
        pass
    return None


def used_by(servers: list[Server]) -> Resources:
    """Resources the Servers bound here claim, from the flavor each was scheduled with."""
    used = Resources()
    for server in servers:
        flavor = server.status.flavor
        if flavor is not None:
            used.vcpus += flavor.vcpus
            used.memoryMiB += flavor.memoryMiB
            used.diskGiB += flavor.diskGiB
    return used


class CapacityPublisher:
    def __init__(
        self,
        settings: AgentSettings,
        k: kube.Kube,
        host: Host,
        storage: Storage,
        servers: Callable[[], list[Server]],
        virt_type: str,
        migration: MigrationEndpoint | None = None,
        guest_cpu: str | None = None,
        network: HostNetworking | None = None,
    ) -> None:
        self._settings = settings
        self._kube = k
        self._host = host
        self._storage = storage
        self._servers = servers
        self._virt_type = virt_type
        self._migration = migration
        """Where migrations to this host go (does not change while the agent runs)."""
        self._guest_cpu = guest_cpu
        self._network = network
        """Tunnel address and physical networks (from the settings)."""
        """The CPU this host offers guests (does not change while the agent runs)."""
        self._facts: HostFacts | None = None
        self._facts_at = 0.0
        self._boot_time = boot_time()
        self._ready: Condition | None = None
        self._last_good: HypervisorStatus | None = None
        self._failures = 0
        """Failed reads of libvirt since the last good one."""

    def facts(self) -> HostFacts:
        """The host's CPU, size and versions; read again every few minutes (they rarely change,
        and the first read makes libvirtd probe QEMU, which takes seconds)."""
        now = time.monotonic()
        if self._facts is None or now - self._facts_at > FACTS_REFRESH_SECONDS:
            self._facts = self._host.facts()
            self._facts_at = now
        return self._facts

    def _condition(self, status: ConditionStatus, reason: str, message: str) -> Condition:
        old = [self._ready] if self._ready else []
        self._ready = common.set_condition(old, "Ready", status, reason, message)[0]
        return self._ready

    def write(self, status: HypervisorStatus) -> None:
        self._kube.apply_status(hypervisor_ref(self._settings.host_name), status)

    def compute(self) -> HypervisorStatus:
        """The Hypervisor status as it is now (libvirt's figures, what the Servers bound here
        claim), stamped with the time as its heartbeat."""
        s = self._settings
        reserved = Resources(
            vcpus=s.reserved_vcpus, memoryMiB=s.reserved_memory_mib, diskGiB=s.reserved_disk_gib
        )
        status = HypervisorStatus(
            lastHeartbeatTime=common.now(),
            reserved=reserved,
            used=used_by(self._servers()),
            virtType=self._virt_type,
        )
        if self._migration is not None:
            status.migration = self._migration
        if self._guest_cpu is not None:
            status.guestCPU = self._guest_cpu
        if self._network is not None:
            status.network = self._network
        try:
            facts = self.facts()
            pool = self._storage.usage()
            running = sum(1 for d in self._host.domains() if d.active and d.owner is not None)
        except errors.HypervisorError as exc:
            self._failures += 1
            if self._failures < UNREACHABLE_AFTER and self._last_good is not None:
                log.warning(
                    "reading libvirt for the capacity failed (%s); the last figures stand "
                    "until the next beat",
                    exc,
                )
                return self._last_good.model_copy(
                    update={"lastHeartbeatTime": status.lastHeartbeatTime}
                )
            log.warning("libvirt unreachable while publishing capacity: %s", exc)
            status.conditions = [
                self._condition("False", "LibvirtUnreachable", f"libvirt at {s.libvirt_uri}: {exc}")
            ]
            return status
        total = Resources(
            vcpus=facts.cpus, memoryMiB=facts.memory_mib, diskGiB=pool.capacity_bytes // GIB
        )
        assert status.used is not None
        status.hostUUID = facts.uuid
        status.hypervisorType = facts.hypervisor_type
        status.hypervisorVersion = facts.hypervisor_version
        status.libvirtVersion = facts.libvirt_version
        status.cpuInfo = CpuInfo(
            arch=facts.cpu.arch,
            model=facts.cpu.model,
            vendor=facts.cpu.vendor,
            features=list(facts.cpu.features),
            sockets=facts.cpu.sockets,
            cores=facts.cpu.cores,
            threads=facts.cpu.threads,
        )
        status.guestArchitectures = list(facts.guest_archs)
        status.firmwares = list(facts.firmwares)
        status.machineTypes = list(facts.machine_types)
        status.total = total
        status.free = Resources(
            vcpus=max(0, total.vcpus - reserved.vcpus - status.used.vcpus),
            memoryMiB=max(0, total.memoryMiB - reserved.memoryMiB - status.used.memoryMiB),
            diskGiB=max(0, total.diskGiB - reserved.diskGiB - status.used.diskGiB),
        )
        status.runningVMs = running
        status.bootTime = self._boot_time
        status.conditions = [
            self._condition("True", "AgentReady", f"libvirt {facts.libvirt_version}")
        ]
        self._failures = 0
        self._last_good = status
        return status
