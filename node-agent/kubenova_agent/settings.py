"""The agent's settings: one frozen object, read once at start-up. Each field is declared once
here; its flag (``--field-name``), its environment default (``KUBENOVA_FIELD_NAME``) and its
``--help`` text are generated from the declaration (:mod:`kubenova_api.config`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from kubenova_agent import images
from kubenova_agent.images import fetch, inspect
from kubenova_api import config, constants, imagesource
from kubenova_api.config import option


@dataclasses.dataclass(frozen=True)
class AgentSettings(imagesource.SourceOptions):
    """The agent's settings; the image source policy (``--image-allowed-ports`` …) comes from
    :class:`kubenova_api.imagesource.SourceOptions`, shared with the controller."""

    host_name: str = option(
        os.uname().nodename,
        "Name of this host's Hypervisor object; Servers bound to it are this agent's "
        "(in a pod: the node's name, from the downward API).",
    )
    libvirt_uri: str = option(
        "qemu:///system", "The host's libvirt (test:///default for the test driver)."
    )
    virt_type: str = option(
        "auto",
        "Domain type: kvm, qemu (software emulation), test, or auto (kvm if the host "
        "advertises it, else qemu).",
        choices=("auto", "kvm", "qemu", "test"),
    )
    state_dir: str = option(
        "/var/lib/kubenova",
        "Image cache (images/), the storage pool (instances/) and consoles (consoles/).",
    )
    pool_name: str = option("kubenova", "The libvirt storage pool that holds the guests' disks.")
    heartbeat_seconds: float = option(
        10.0,
        "How often the agent renews its heartbeat Lease (and publishes its Hypervisor status "
        "when a figure in it changed).",
    )
    heartbeat_namespace: str = option(
        constants.HEARTBEAT_NAMESPACE,
        "Namespace of this host's heartbeat Lease (in a pod: its own namespace). Empty: no "
        "Lease, the Hypervisor status is written every heartbeat instead.",
        env="POD_NAMESPACE",
    )
    status_report_seconds: float = option(
        300.0,
        "While the heartbeat Lease is renewed, how often the Hypervisor status is written even "
        "when nothing in it changed (as the kubelet reports a Node's status every 5 minutes).",
    )
    resync_seconds: float = option(
        60.0, "How often every Server of this host is reconciled even without a change."
    )
    workers: int = option(4, "Servers reconciled in parallel (never two at once for one Server).")
    reserved_vcpus: int = option(0, "vCPUs kept for the host itself.")
    reserved_memory_mib: int = option(
        512, "Memory kept for the host itself (Nova's reserved_host_memory_mb)."
    )
    reserved_disk_gib: int = option(0, "Disk kept for the host itself.")
    kubeconfig: str | None = option(
        None, "A kubeconfig; the pod's service account is used when unset.", env="KUBECONFIG"
    )
    peer_libvirt_uri: str | None = option(
        None,
        "How other hosts' libvirtd reach this host's libvirtd for a migration "
        "(default qemu+tcp://<host name>/system).",
    )
    migration_address: str | None = option(
        None, "The address migration data to this host is sent to (default: the host name)."
    )
    cpu_mode: str = option(
        "default",
        "The guests' CPU: default (the hypervisor's default; host-model under kvm), "
        "host-model, host-passthrough, custom (--cpu-model), or cluster: the baseline of every "
        "enabled host's CPU, so any guest can move to any host (like vSphere's EVC). A Flavor's "
        "hw:cpu_mode / hw:cpu_model extra specs override it.",
        choices=("default", "host-model", "host-passthrough", "custom", "cluster"),
    )
    cpu_model: str | None = option(None, "The CPU model for --cpu-mode custom.")
    disk_cache: str | None = option(
        None,
        "The guests' disk cache mode; none where the instances folder is a shared filesystem "
        "(NFS, CephFS), as libvirt needs for a safe live migration.",
        choices=("none", "writethrough", "writeback", "directsync", "unsafe"),
    )
    boot_timeout_seconds: float = option(
        120.0,
        "How long after starting a guest the agent watches its console for the firmware "
        "giving up (no bootable device); such a Server's Ready condition says so.",
    )
    health_address: str | None = option(
        None,
        "Serve /healthz and /readyz for the kubelet's probes at host:port (e.g. :8082); "
        "nothing listens when unset (the local test bed runs many agents).",
    )
    metrics_address: str | None = option(
        None, "Serve Prometheus metrics at host:port (e.g. :8090); nothing listens when unset."
    )
    migration_workers: int = option(
        2,
        "Migration steps handled in parallel (each running migration also has its own thread).",
    )
    tunnel_address: str | None = option(
        None,
        "This host's VXLAN endpoint on the underlay (published on its Hypervisor; the other "
        "hosts send tenant networks' traffic there). Unset: the host carries no tenant network.",
    )
    tunnel_device: str | None = option(
        None,
        "The interface VXLAN runs over and egress leaves by (default: the one that has "
        "--tunnel-address).",
    )
    physical_interface_mappings: str = option(
        "",
        "Provider networks' physical networks and this host's interfaces, "
        "physnet:interface[,...] (Neutron's physical_interface_mappings): the agent makes a "
        "bridge per provider network with the interface (or a VLAN of it) in it.",
    )
    bridge_mappings: str = option(
        "",
        "Physical networks and existing host bridges, physnet:bridge[,...] (br0 with the "
        "host's NIC in it, the usual bare-metal KVM set-up): flat networks use the bridge as is.",
    )
    network_namespace: str | None = option(
        None,
        "Run the host's network commands (ip, bridge, nft, dnsmasq) in this network namespace "
        "(a file such as /run/netns/NAME). Unset: the agent's own; in production the agent's "
        "DaemonSet runs with hostNetwork.",
    )
    network_plumbing: bool = option(
        True,
        "Make the host's bridges, VXLAN devices, DHCP servers and SNAT. Off for simulated hosts "
        "(libvirt's test driver): addresses and NICs are still given, nothing is plumbed.",
    )
    egress_deny_cidrs: str = option(
        "",
        "Destinations egress traffic of tenant networks never reaches, besides the underlay's "
        "own subnet (always denied: other hosts' libvirtd, kubelet, the API server), "
        "cidr[,...].",
    )

    image_max_download_bytes: int = option(
        fetch.FetchLimits.max_bytes, "The largest image download accepted (the file's size)."
    )
    image_download_deadline_seconds: float = option(
        fetch.FetchLimits.deadline_seconds,
        "How long one image download may take in all (redirects, connecting, every read).",
    )
    image_io_timeout_seconds: float = option(
        fetch.FetchLimits.io_timeout_seconds,
        "How long one connect or read of an image download may wait for the server.",
    )
    image_max_virtual_bytes: int = option(
        inspect.InspectLimits.max_virtual_bytes,
        "The largest disk (virtual size) an image may describe.",
    )
    image_max_boot_file_bytes: int = option(
        inspect.InspectLimits.max_boot_file_bytes, "The largest kernel or ramdisk."
    )
    image_min_free_bytes: int = option(
        images.ImageSettings.min_free_bytes,
        "Room an image download must leave free on the image cache's filesystem.",
    )
    image_ca_file: str | None = option(
        None, "CA certificates for https image servers (the system's when unset)."
    )
    image_gc_min_unused_seconds: float = option(
        images.ImageSettings.gc_min_unused_seconds,
        "A cached image unused this long that backs no disk is removed (Nova: a day).",
    )
    image_gc_interval_seconds: float = option(
        images.ImageSettings.gc_interval_seconds, "How often unused cached images are looked for."
    )
    max_shutdown_timeout_seconds: float = option(
        600.0,
        "The longest a soft stop or reboot waits for the guest before forcing it, whatever the "
        "Server's shutdownTimeoutSeconds says (tenants may ask for up to 3600).",
    )

    @property
    def image_settings(self) -> images.ImageSettings:
        """Everything about images, as the image cache takes it."""
        return images.ImageSettings(
            sources=self.source_policy(),
            download=fetch.FetchLimits(
                max_bytes=self.image_max_download_bytes,
                deadline_seconds=self.image_download_deadline_seconds,
                io_timeout_seconds=self.image_io_timeout_seconds,
            ),
            inspection=inspect.InspectLimits(
                max_virtual_bytes=self.image_max_virtual_bytes,
                max_boot_file_bytes=self.image_max_boot_file_bytes,
            ),
            ca_file=self.image_ca_file,
            min_free_bytes=self.image_min_free_bytes,
            gc_min_unused_seconds=self.image_gc_min_unused_seconds,
            gc_interval_seconds=self.image_gc_interval_seconds,
        )

    @property
    def peer_uri(self) -> str:
        return self.peer_libvirt_uri or f"qemu+tcp://{self.host_name}/system"

    @property
    def migration_target_address(self) -> str:
        return self.migration_address or self.host_name

    @property
    def interface_mappings(self) -> dict[str, str]:
        return _mappings(self.physical_interface_mappings)

    @property
    def bridges(self) -> dict[str, str]:
        return _mappings(self.bridge_mappings)

    @property
    def physical_networks(self) -> list[str]:
        """Physical networks this host carries (the scheduler's NetworkFilter reads them)."""
        return sorted({*self.interface_mappings, *self.bridges})

    @property
    def network_dir(self) -> str:
        return os.path.join(self.state_dir, "network")

    @property
    def images_dir(self) -> str:
        return os.path.join(self.state_dir, "images")

    @property
    def instances_dir(self) -> str:
        return os.path.join(self.state_dir, "instances")

    @property
    def consoles_dir(self) -> str:
        return os.path.join(self.state_dir, "consoles")


def _mappings(text: str) -> dict[str, str]:
    """``a:x,b:y`` as ``{"a": "x", "b": "y"}``."""
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.strip().partition(":")
        if not sep or not name or not value:
            raise ValueError(f"not physnet:device: {item!r}")
        out[name] = value
    return out


def from_args(argv: Sequence[str] | None = None) -> AgentSettings:
    """Settings from command-line flags, each defaulting to its ``KUBENOVA_*`` variable."""
    return config.parse(AgentSettings, argv, "kubenova-agent", "kubenova node agent")
