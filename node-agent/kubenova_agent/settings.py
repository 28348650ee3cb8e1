"""The agent's settings: one frozen object, read once at start-up from flags and environment."""

from __future__ import annotations

import argparse
import dataclasses
import os

from kubenova_agent import images


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    host_name: str
    """Name of this host's Hypervisor object; Servers bound to it are this agent's."""
    libvirt_uri: str = "qemu:///system"
    """The host's libvirt (``test:///default`` for the test driver)."""
    virt_type: str = "auto"
    """Domain type: ``kvm``, ``qemu`` (software emulation), ``test``, or ``auto`` (kvm if the
    host advertises it, else qemu)."""
    state_dir: str = "/var/lib/kubenova"
    """Image cache (``images/``), the storage pool (``instances/``) and consoles (``consoles/``)."""
    pool_name: str = "kubenova"
    """The libvirt storage pool that holds the guests' disks."""
    heartbeat_seconds: float = 10.0
    """How often the Hypervisor status (capacity and heartbeat) is published."""
    resync_seconds: float = 60.0
    """How often every Server of this host is reconciled even without a change."""
    workers: int = 4
    """Servers reconciled in parallel (never two at once for one Server)."""
    reserved_vcpus: int = 0
    """vCPUs kept for the host itself."""
    reserved_memory_mib: int = 512
    """Memory kept for the host itself (Nova's ``reserved_host_memory_mb``)."""
    reserved_disk_gib: int = 0
    """Disk kept for the host itself."""
    kubeconfig: str | None = None
    """A kubeconfig; the pod's service account is used when unset."""
    peer_libvirt_uri: str | None = None
    """How other hosts' libvirtd reach this host's libvirtd for a migration
    (default ``qemu+tcp://<host name>/system``)."""
    migration_address: str | None = None
    """The address migration data to this host is sent to (default: the host name)."""
    cpu_mode: str = "default"
    """The guests' CPU: ``default`` (the hypervisor's default model; host-model under kvm),
    ``host-model``, ``host-passthrough``, ``custom`` (``cpu_model``), or ``cluster`` — the
    baseline of every enabled host's CPU, so any guest can move to any host (like vSphere's
    EVC). A Flavor's ``hw:cpu_mode`` / ``hw:cpu_model`` extra specs override it."""
    cpu_model: str | None = None
    """The CPU model for ``cpu_mode=custom``."""
    disk_cache: str | None = None
    """The guests' disk cache mode; ``none`` where the instances folder is a shared
    filesystem (NFS, CephFS), as libvirt needs for a safe live migration."""
    migration_workers: int = 2
    """Migration steps handled in parallel (each running migration also has its own thread)."""
    image_settings: images.ImageSettings = dataclasses.field(default_factory=images.ImageSettings)
    """Where images may come from, download limits, image checks and cache collection
    (``--image-*``; see :mod:`kubenova_agent.images`)."""

    @property
    def peer_uri(self) -> str:
        return self.peer_libvirt_uri or f"qemu+tcp://{self.host_name}/system"

    @property
    def migration_target_address(self) -> str:
        return self.migration_address or self.host_name

    @property
    def images_dir(self) -> str:
        return os.path.join(self.state_dir, "images")

    @property
    def instances_dir(self) -> str:
        return os.path.join(self.state_dir, "instances")

    @property
    def consoles_dir(self) -> str:
        return os.path.join(self.state_dir, "consoles")


def from_args(argv: list[str] | None = None) -> AgentSettings:
    """Settings from command-line flags, each defaulting to a ``KUBENOVA_*`` variable."""
    env = os.environ
    d = AgentSettings(host_name="")
    p = argparse.ArgumentParser(prog="kubenova-agent", description="kubenova node agent")
    p.add_argument("--host-name", default=env.get("KUBENOVA_HOST_NAME", os.uname().nodename))
    p.add_argument("--libvirt-uri", default=env.get("KUBENOVA_LIBVIRT_URI", d.libvirt_uri))
    p.add_argument(
        "--virt-type",
        choices=["auto", "kvm", "qemu", "test"],
        default=env.get("KUBENOVA_VIRT_TYPE", d.virt_type),
    )
    p.add_argument("--state-dir", default=env.get("KUBENOVA_STATE_DIR", d.state_dir))
    p.add_argument("--pool-name", default=env.get("KUBENOVA_POOL_NAME", d.pool_name))
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=float(env.get("KUBENOVA_HEARTBEAT_SECONDS", d.heartbeat_seconds)),
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get("KUBENOVA_RESYNC_SECONDS", d.resync_seconds)),
    )
    p.add_argument("--workers", type=int, default=int(env.get("KUBENOVA_WORKERS", d.workers)))
    p.add_argument(
        "--reserved-memory-mib",
        type=int,
        default=int(env.get("KUBENOVA_RESERVED_MEMORY_MIB", d.reserved_memory_mib)),
    )
    p.add_argument("--reserved-vcpus", type=int, default=int(env.get("KUBENOVA_RESERVED_VCPUS", 0)))
    p.add_argument(
        "--reserved-disk-gib", type=int, default=int(env.get("KUBENOVA_RESERVED_DISK_GIB", 0))
    )
    p.add_argument("--kubeconfig", default=env.get("KUBECONFIG"))
    p.add_argument("--peer-libvirt-uri", default=env.get("KUBENOVA_PEER_LIBVIRT_URI"))
    p.add_argument("--migration-address", default=env.get("KUBENOVA_MIGRATION_ADDRESS"))
    p.add_argument(
        "--cpu-mode",
        choices=["default", "host-model", "host-passthrough", "custom", "cluster"],
        default=env.get("KUBENOVA_CPU_MODE", d.cpu_mode),
    )
    p.add_argument("--cpu-model", default=env.get("KUBENOVA_CPU_MODEL"))
    p.add_argument(
        "--disk-cache",
        choices=["none", "writethrough", "writeback", "directsync", "unsafe"],
        default=env.get("KUBENOVA_DISK_CACHE"),
    )
    images.add_arguments(p)
    a = p.parse_args(argv)
    return AgentSettings(
        host_name=a.host_name,
        libvirt_uri=a.libvirt_uri,
        virt_type=a.virt_type,
        state_dir=a.state_dir,
        pool_name=a.pool_name,
        heartbeat_seconds=a.heartbeat_seconds,
        resync_seconds=a.resync_seconds,
        workers=a.workers,
        reserved_vcpus=a.reserved_vcpus,
        reserved_memory_mib=a.reserved_memory_mib,
        reserved_disk_gib=a.reserved_disk_gib,
        kubeconfig=a.kubeconfig,
        peer_libvirt_uri=a.peer_libvirt_uri,
        migration_address=a.migration_address,
        cpu_mode=a.cpu_mode,
        cpu_model=a.cpu_model,
        disk_cache=a.disk_cache,
        image_settings=images.from_arguments(a),
    )
