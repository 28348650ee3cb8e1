"""The custom resources: Flavor, Image, Server, ServerGroup, ServerMigration, Hypervisor
(compute.kubenova.io/v1alpha1).

Every field carries a description (it becomes ``kubectl explain`` text). Rules the OpenAPI
schema cannot state are CEL ``x-kubernetes-validations`` attached with :func:`cel`.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, StringConstraints

from kubenova_api import constants
from kubenova_api.common import ApiModel, Condition, KubeObject, StatusModel
from kubenova_api.networks import HostNetworking, NetworkAttachment, ServerAddress

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SHA256 = r"^[a-f0-9]{64}$"
XML_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x{fffe}\x{ffff}]*$"
"""Text the domain XML can carry (XML 1.0 has no other control characters)."""

# Regular expressions over an image URL, in CEL string literals (hence the doubled
# backslashes). CEL's url() and ip() cost too much for the API server's budget on a 2 KiB
# field, so the host is matched in the whole URL: scheme, optional user info, host, port, rest.
_URL_HOST = r"^(?i)https?://([^@/]*@)?"
_URL_REST = r"(:[0-9]*)?([/?#].*)?$"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
NUMERIC_HOST = _URL_HOST + r"(0x[0-9a-f]*|[0-9]+)(\\.(0x[0-9a-f]*|[0-9]+))*" + _URL_REST
"""A host of numbers, which resolvers read as an IPv4 address (2852039166, 0x7f.1, 127.1)."""
CANONICAL_IPV4_HOST = _URL_HOST + rf"({_OCTET}\\.){{3}}{_OCTET}" + _URL_REST
MAPPED_IPV6_HOST = _URL_HOST + r"\\[[0:]*ffff:[^\\]]*\\]" + _URL_REST
"""An IPv4-mapped IPv6 literal ([::ffff:169.254.169.254]): an IPv4 address in disguise."""
NEVER_A_SOURCE_HOST = (
    _URL_HOST
    + r"(169\\.254\\.[0-9.]+|0\\.[0-9.]+|(22[4-9]|23[0-9]|24[0-9]|25[0-5])\\.[0-9.]+"
    + r"|\\[(fe[89ab][0-9a-f]|ff[0-9a-f]{2}):[^\\]]*\\]|\\[[0:]*\\])"
    + _URL_REST
)
"""Link-local (169.254/16 with the metadata service, fe80::/10), unspecified (0/8, ::),
multicast and reserved/broadcast (224/4, 240/4, ff00::/8) literal hosts. Loopback and private
addresses are left to the agents' source policy (kubenova_api.imagesource), which an admin may
widen: a node-local mirror on 127.0.0.1 is legitimate, and the test bed serves from there."""


def cel(*rules: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """Schema extras carrying CEL rules as ``(rule, message)`` pairs, plus any other keys."""
    out: dict[str, Any] = dict(extra)
    out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    return out


IMMUTABLE = ("self == oldSelf", "is immutable")

# ----------------------------------------------------------------------------- Flavor


class FlavorSpec(ApiModel):
    """The size of a Server, as Nova's flavors are: immutable once created."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            ("self == oldSelf", "a Flavor is immutable: create a new one to change a size")
        )
    }

    vcpus: int = Field(ge=1, le=512, description="Virtual CPUs (at least 1).")
    memoryMiB: int = Field(ge=16, le=16 * 1024 * 1024, description="Memory in MiB (at least 16).")
    diskGiB: int = Field(
        default=1,
        ge=0,
        le=65536,
        description="Root disk size in GiB; 0 means the size of the image's disk.",
    )
    extraSpecs: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict,
        description="Nova-style extra specs; values are strings of at most 255 characters. "
        "kubenova acts on hw:cpu_mode (default, host-model, host-passthrough, custom, cluster) "
        "and hw:cpu_model (a libvirt CPU model, which implies custom); others are kept as hints.",
        json_schema_extra=cel(
            (
                "!('hw:cpu_mode' in self) || self['hw:cpu_mode'] in "
                "['default', 'host-model', 'host-passthrough', 'custom', 'cluster']",
                "hw:cpu_mode must be one of default, host-model, host-passthrough, custom, cluster",
            ),
            (
                "!('hw:cpu_model' in self) || "
                "self['hw:cpu_model'].matches('^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$')",
                "hw:cpu_model must be a libvirt CPU model name (letters, digits, '_', '.', '+', "
                "'-'; e.g. Skylake-Client-IBRS or EPYC-v4); whether this host knows it is "
                "checked when the server is built",
            ),
            (
                "!('hw:cpu_model' in self) || !('hw:cpu_mode' in self) || "
                "self['hw:cpu_mode'] == 'custom'",
                "hw:cpu_model needs hw:cpu_mode custom (or no hw:cpu_mode)",
            ),
        ),
    )


class FlavorStatus(StatusModel):
    conditions: list[Condition] = Field(default_factory=list, description="Validity.")


class Flavor(KubeObject):
    KIND: ClassVar[str] = "Flavor"
    PLURAL: ClassVar[str] = constants.FLAVORS
    spec: FlavorSpec
    status: FlavorStatus = Field(default_factory=FlavorStatus)


# ----------------------------------------------------------------------------- Image


class DiskFormat(enum.StrEnum):
    qcow2 = "qcow2"
    raw = "raw"


class Architecture(enum.StrEnum):
    x86_64 = "x86_64"
    i686 = "i686"


class VirtType(enum.StrEnum):
    kvm = "kvm"
    qemu = "qemu"


class RemoteFile(ApiModel):
    """A file fetched over HTTP(S) and verified by its SHA-256 checksum."""

    url: str = Field(
        min_length=8,
        max_length=2048,
        description="Where to fetch the file: an http:// or https:// URL.",
        json_schema_extra=cel(
            (
                "isURL(self) && url(self).getScheme() in ['http', 'https']"
                " && url(self).getHostname() != ''",
                "must be an http:// or https:// URL",
            ),
            (
                f"(!self.matches('{NUMERIC_HOST}') || self.matches('{CANONICAL_IPV4_HOST}'))"
                f" && !self.matches('{MAPPED_IPV6_HOST}')",
                "the URL's host must be a DNS name or a canonical IP address",
            ),
            (
                f"!self.matches('{NEVER_A_SOURCE_HOST}')",
                "link-local (such as the metadata service 169.254.169.254), multicast, "
                "broadcast and unspecified addresses are never image sources",
            ),
        ),
    )
    sha256: str = Field(
        pattern=SHA256,
        description="SHA-256 of the file, 64 lowercase hex digits; a mismatch fails the boot.",
    )


class DiskSource(RemoteFile):
    """A bootable disk image (Glance's disk_format)."""

    format: DiskFormat = Field(default=DiskFormat.qcow2, description="qcow2 or raw.")


class UecSource(ApiModel):
    """A UEC image: a kernel and a ramdisk booted directly, optionally with a root disk."""

    kernel: RemoteFile = Field(description="The kernel (vmlinuz).")
    ramdisk: RemoteFile = Field(description="The initial ramdisk (initrd).")
    disk: DiskSource | None = Field(
        default=None, description="An optional root disk; without it the guest gets a blank one."
    )
    cmdline: str = Field(
        default="console=ttyS0",
        max_length=1024,
        pattern=XML_TEXT,
        description="The kernel command line (no control characters but tab and newline).",
    )


class ImageSource(ApiModel):
    """Exactly one of ``disk`` or ``uec``."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            ("has(self.disk) != has(self.uec)", "exactly one of source.disk or source.uec is set")
        )
    }

    disk: DiskSource | None = Field(default=None, description="A disk image.")
    uec: UecSource | None = Field(default=None, description="A kernel + ramdisk (UEC) image.")


class FirmwareType(enum.StrEnum):
    """Nova's ``hw_firmware_type``."""

    bios = "bios"
    uefi = "uefi"


class SecureBoot(enum.StrEnum):
    """Nova's ``os_secure_boot``."""

    required = "required"
    disabled = "disabled"
    optional = "optional"


class DiskBus(enum.StrEnum):
    """Nova's ``hw_disk_bus`` (for the root disk; the config drive stays on virtio)."""

    virtio = "virtio"
    scsi = "scsi"
    sata = "sata"
    ide = "ide"


class RngModel(enum.StrEnum):
    """Nova's ``hw_rng_model``."""

    virtio = "virtio"


class VideoModel(enum.StrEnum):
    """Nova's ``hw_video_model``; ``none`` gives the guest no video device."""

    none = "none"
    vga = "vga"
    virtio = "virtio"
    bochs = "bochs"
    cirrus = "cirrus"


MACHINE_TYPE = r"^(pc|q35|pc-(i440fx|q35)-[0-9]+(\.[0-9]+)+)$"
Q35 = "self.hw_machine_type.contains('q35')"


class ImageProperties(ApiModel):
    """Glance image properties that decide the guest's virtual hardware, with Nova's names
    and meanings. Unset means the host's default (BIOS on an i440fx machine, virtio disk, no
    RNG, no video device)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.os_secure_boot) || self.os_secure_boot != 'required' || "
                "(has(self.hw_firmware_type) && self.hw_firmware_type == 'uefi')",
                "os_secure_boot: required needs hw_firmware_type: uefi",
            ),
            (
                "!has(self.os_secure_boot) || self.os_secure_boot != 'required' || "
                f"!has(self.hw_machine_type) || {Q35}",
                "os_secure_boot: required needs a q35 machine type (i440fx has no SMM for it)",
            ),
            (
                "!has(self.hw_disk_bus) || self.hw_disk_bus != 'ide' || "
                f"(has(self.hw_machine_type) ? !({Q35}) : "
                "!(has(self.hw_firmware_type) && self.hw_firmware_type == 'uefi'))",
                "hw_disk_bus ide needs an i440fx machine type (q35, the UEFI default, has no "
                "IDE controller)",
            ),
        )
    }

    hw_firmware_type: FirmwareType | None = Field(
        default=None, description="bios (SeaBIOS) or uefi (OVMF); bios when unset."
    )
    os_secure_boot: SecureBoot | None = Field(
        default=None,
        description="UEFI secure boot with the enrolled-keys firmware: required (only hosts "
        "that have it), optional (where available) or disabled (the default).",
    )
    hw_machine_type: str | None = Field(
        default=None,
        max_length=64,
        pattern=MACHINE_TYPE,
        description="QEMU machine type: pc, q35 or a versioned one (pc-q35-7.2); pc for BIOS "
        "and q35 for UEFI when unset.",
    )
    hw_disk_bus: DiskBus | None = Field(
        default=None, description="Bus of the root disk: virtio (default), scsi, sata or ide."
    )
    hw_rng_model: RngModel | None = Field(
        default=None, description="virtio gives the guest a virtio RNG fed by /dev/urandom."
    )
    hw_video_model: VideoModel | None = Field(
        default=None, description="The video device: none (default), vga, virtio, bochs, cirrus."
    )

    @property
    def firmware(self) -> FirmwareType:
        return self.hw_firmware_type or FirmwareType.bios

    @property
    def disk_bus(self) -> DiskBus:
        return self.hw_disk_bus or DiskBus.virtio

    @property
    def machine_type(self) -> str | None:
        """The machine type the guest gets: set, else q35 for UEFI, else the host's default."""
        if self.hw_machine_type:
            return self.hw_machine_type
        return "q35" if self.firmware is FirmwareType.uefi else None


class ImageSpec(ApiModel):
    """A Glance-like image. Its source is immutable: an image's bits never change by name."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.properties) || !has(self.properties.os_secure_boot) || "
                "self.properties.os_secure_boot != 'required' || has(self.source.disk)",
                "os_secure_boot: required needs a disk image (a UEC kernel is booted directly, "
                "past the firmware's signature checks)",
            )
        )
    }

    source: ImageSource = Field(
        description="Where the image's bits come from (immutable).",
        json_schema_extra=cel(("self == oldSelf", "an Image's source is immutable")),
    )
    minDiskGiB: int = Field(default=0, ge=0, le=65536, description="Smallest root disk it needs.")
    minMemoryMiB: int = Field(default=0, ge=0, description="Least memory it needs, in MiB.")
    architecture: Architecture = Field(
        default=Architecture.x86_64, description="CPU architecture of the image."
    )
    virtType: VirtType | None = Field(
        default=None,
        description="Only hosts that run guests this way (kvm or qemu emulation); any if unset.",
    )
    properties: ImageProperties = Field(
        default_factory=ImageProperties,
        description="Glance image properties that decide the virtual hardware (Nova's names: "
        "hw_firmware_type, os_secure_boot, hw_machine_type, hw_disk_bus, hw_rng_model, "
        "hw_video_model); unknown ones are refused.",
    )


class ImageStatus(StatusModel):
    conditions: list[Condition] = Field(default_factory=list, description="Validity.")


class Image(KubeObject):
    KIND: ClassVar[str] = "Image"
    PLURAL: ClassVar[str] = constants.IMAGES
    spec: ImageSpec
    status: ImageStatus = Field(default_factory=ImageStatus)


# ----------------------------------------------------------------------------- Server


class PowerState(enum.StrEnum):
    Running = "Running"
    Stopped = "Stopped"
    Suspended = "Suspended"
    Paused = "Paused"


class RestartPolicy(enum.StrEnum):
    Always = "Always"
    OnFailure = "OnFailure"
    Never = "Never"


class Phase(enum.StrEnum):
    """Nova's vocabulary for where a server is."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"
    SUSPENDED = "SUSPENDED"
    PAUSED = "PAUSED"
    RESCUE = "RESCUE"
    MIGRATING = "MIGRATING"
    DELETING = "DELETING"
    ERROR = "ERROR"


class RebootType(enum.StrEnum):
    Soft = "Soft"
    Hard = "Hard"


INJECTED_PATH = r"^/[^\x00]*$"


class InjectedFile(ApiModel):
    """A file written into the guest through the config drive (Nova's personality files)."""

    path: str = Field(
        min_length=2,
        max_length=255,
        pattern=INJECTED_PATH,
        description="Absolute path of the file in the guest.",
        json_schema_extra=cel(
            (
                "!self.split('/').exists(p, p == '..' || p == '.')",
                "path must not contain '.' or '..' segments",
            ),
            ("!self.endsWith('/')", "path must name a file, not a folder"),
        ),
    )
    content: str = Field(max_length=65536, description="The file's content (at most 64 KiB).")


class Rescue(ApiModel):
    """Boot a rescue image with the server's own disk attached as the second disk."""

    imageRef: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Image to rescue with; the server's own image when unset.",
    )


class ServerSpec(ApiModel):
    """What the user wants of a server; everything observed is in status."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            (
                "self.imageRef == oldSelf.imageRef || (has(self.rebuildRequestedAt) && "
                "(!has(oldSelf.rebuildRequestedAt) || "
                "self.rebuildRequestedAt != oldSelf.rebuildRequestedAt))",
                "imageRef changes only by a rebuild: set a new rebuildRequestedAt with it",
            )
        )
    }

    flavorRef: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Flavor (cluster-scoped) that sizes this server.",
    )
    imageRef: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Image (cluster-scoped) to boot; changed only together with "
        "a new rebuildRequestedAt (a rebuild).",
    )
    powerState: PowerState = Field(
        default=PowerState.Running, description="Running, Stopped, Suspended or Paused."
    )
    restartPolicy: RestartPolicy = Field(
        default=RestartPolicy.Always,
        description="What to do when the guest stops by itself: Always, OnFailure or Never.",
    )
    availabilityZone: str | None = Field(
        default=None, max_length=255, description="Only hosts in this zone are considered."
    )
    serverGroupRef: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="A ServerGroup in the same namespace whose policy places this server.",
        json_schema_extra=cel(("self == oldSelf", "serverGroupRef is immutable")),
    )
    hostName: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Run on this host (as Nova's admin-only host), skipping the choice.",
    )
    userData: str | None = Field(
        default=None,
        max_length=65535,
        description="User data on the config drive (cloud-init); at most 64 KiB.",
    )
    sshKeys: list[
        Annotated[str, StringConstraints(max_length=8192), Field(description="A public key.")]
    ] = Field(
        default_factory=list,
        max_length=16,
        description="Public SSH keys on the config drive (public_keys in meta_data.json).",
    )
    files: list[InjectedFile] = Field(
        default_factory=list,
        max_length=10,
        description="Files injected through the config drive (at most 10, 64 KiB each).",
    )
    rebootRequestedAt: dt.datetime | None = Field(
        default=None,
        description="A new value asks for one reboot (as `kubectl rollout restart` does).",
    )
    rebuildRequestedAt: dt.datetime | None = Field(
        default=None,
        description="A new value asks for one rebuild (Nova's rebuild): the root disk is made "
        "anew from imageRef and the config drive rewritten; same UID, name, host and flavor.",
    )
    rebootType: RebootType = Field(
        default=RebootType.Soft,
        description="Soft (ACPI shutdown, then hard after shutdownTimeoutSeconds) or Hard.",
    )
    shutdownTimeoutSeconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="How long a soft stop or reboot waits for the guest before forcing it.",
    )
    rescue: Rescue | None = Field(
        default=None,
        description="Set to rescue the server (Nova's rescue); remove to unrescue.",
    )
    networks: list[NetworkAttachment] | None = Field(
        default=None,
        max_length=8,
        description="NICs in the guest's order; omitted: one NIC on the namespace's default "
        "Network (as Nova's 'auto'); an empty list: no NIC. Immutable.",
        json_schema_extra=cel(("self == oldSelf", "networks is immutable")),
    )


class FlavorSnapshot(StatusModel):
    name: str | None = Field(default=None, description="The Flavor's name.")
    vcpus: int = Field(description="vCPUs the server was booted with.")
    memoryMiB: int = Field(description="Memory in MiB the server was booted with.")
    diskGiB: int = Field(description="Root disk in GiB the server was booted with.")


class PinnedFile(StatusModel):
    url: str = Field(description="Where it was fetched from.")
    sha256: str = Field(description="Its SHA-256: these bits and no others.")


class PinnedImage(StatusModel):
    """The Image a Server is built from, copied when it was first bound: rebuilding it
    (evacuation), rescuing it with its own image and every move use these bits, never what the
    Image of that name says later (it may have been deleted and made again)."""

    name: str = Field(description="The Image's name.")
    architecture: Architecture = Field(description="CPU architecture.")
    disk: PinnedFile | None = Field(default=None, description="The disk image, if any.")
    diskFormat: DiskFormat | None = Field(default=None, description="qcow2 or raw.")
    kernel: PinnedFile | None = Field(default=None, description="UEC: the kernel.")
    ramdisk: PinnedFile | None = Field(default=None, description="UEC: the ramdisk.")
    cmdline: str | None = Field(default=None, description="UEC: the kernel command line.")
    properties: ImageProperties | None = Field(
        default=None, description="The image properties that decide the virtual hardware."
    )

    @classmethod
    def of(cls, name: str, spec: ImageSpec) -> PinnedImage:
        src = spec.source
        disk = src.uec.disk if src.uec is not None else src.disk
        pin = cls(name=name, architecture=spec.architecture, properties=spec.properties)
        if disk is not None:
            pin.disk = PinnedFile(url=disk.url, sha256=disk.sha256)
            pin.diskFormat = disk.format
        if src.uec is not None:
            pin.kernel = PinnedFile(url=src.uec.kernel.url, sha256=src.uec.kernel.sha256)
            pin.ramdisk = PinnedFile(url=src.uec.ramdisk.url, sha256=src.uec.ramdisk.sha256)
            pin.cmdline = src.uec.cmdline
        return pin

    def source(self) -> ImageSource:
        """The pinned bits as an Image's source."""
        disk = None
        if self.disk is not None:
            disk = DiskSource(
                url=self.disk.url,
                sha256=self.disk.sha256,
                format=self.diskFormat or DiskFormat.qcow2,
            )
        if self.kernel is None or self.ramdisk is None:
            return ImageSource(disk=disk)
        return ImageSource(
            uec=UecSource(
                kernel=RemoteFile(url=self.kernel.url, sha256=self.kernel.sha256),
                ramdisk=RemoteFile(url=self.ramdisk.url, sha256=self.ramdisk.sha256),
                disk=disk,
                cmdline=self.cmdline if self.cmdline is not None else "console=ttyS0",
            )
        )


class ServerStatus(StatusModel):
    phase: Phase | None = Field(default=None, description="Nova's status: BUILD, ACTIVE, ...")
    nodeName: str | None = Field(
        default=None, description="The host the server is bound to (written by the controller)."
    )
    powerState: str | None = Field(
        default=None, description="The power state the host observes (written by its agent)."
    )
    flavor: FlavorSnapshot | None = Field(default=None, description="The size it runs with.")
    image: PinnedImage | None = Field(
        default=None,
        description="The image bits it is built from (pinned by the controller when first bound).",
    )
    domainName: str | None = Field(default=None, description="The libvirt domain's name.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Scheduled (the controller), Ready (True when the server is what its spec "
        "declares: running, stopped, paused, ...), Converged, Reconciling (True while "
        "kubenova works towards the spec) and Stalled (True when it refuses or cannot do "
        "what the spec declares).",
    )
    observedGeneration: int | None = Field(
        default=None,
        description="The .metadata.generation the agent last acted on (before binding: the "
        "one the controller decided from; 0 until either has).",
    )
    launchedAt: dt.datetime | None = Field(default=None, description="When it first ran.")
    observedRebootRequestedAt: dt.datetime | None = Field(
        default=None, description="The last reboot request acted on."
    )
    observedRebuildRequestedAt: dt.datetime | None = Field(
        default=None, description="The last rebuild request acted on."
    )
    imageRef: str | None = Field(
        default=None, description="The Image the server runs now (written by its agent)."
    )
    restartCount: int = Field(
        default=0, description="Times the agent started the guest again after it stopped."
    )
    addresses: list[ServerAddress] = Field(
        default_factory=list,
        description="Per NIC, in order: network, IPv4 address, MAC (kept for the server's life).",
    )
    evacuatedFrom: str | None = Field(
        default=None,
        description="The out-of-service host this Server was taken from to be rebuilt on "
        "another (written by the controller).",
    )
    diskRebuilt: bool | None = Field(
        default=None,
        description="After an evacuation: true when the root disk was rebuilt from the image "
        "(the one on the dead host is lost), false when it was found on shared storage "
        "(written by the agent that rebuilt the Server).",
    )


class Server(KubeObject):
    KIND: ClassVar[str] = "Server"
    PLURAL: ClassVar[str] = constants.SERVERS
    spec: ServerSpec
    status: ServerStatus = Field(default_factory=ServerStatus)


# ----------------------------------------------------------------------------- ServerGroup


class GroupPolicy(enum.StrEnum):
    """Nova's server group policies."""

    affinity = "affinity"
    anti_affinity = "anti-affinity"
    soft_affinity = "soft-affinity"
    soft_anti_affinity = "soft-anti-affinity"


class ServerGroupSpec(ApiModel):
    """Servers that name this group are placed together or apart (immutable)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(("self == oldSelf", "a ServerGroup's policy is immutable"))
    }

    policy: GroupPolicy = Field(
        description="affinity / anti-affinity (filters: same host / distinct hosts), or their "
        "soft- variants (weighers: preferred, not required)."
    )


class ServerGroupStatus(StatusModel):
    conditions: list[Condition] = Field(default_factory=list, description="Validity.")


class ServerGroup(KubeObject):
    KIND: ClassVar[str] = "ServerGroup"
    PLURAL: ClassVar[str] = constants.SERVERGROUPS
    spec: ServerGroupSpec
    status: ServerGroupStatus = Field(default_factory=ServerGroupStatus)


# ----------------------------------------------------------------------------- ComputeQuota


class ComputeQuotaSpec(ApiModel):
    """Limits on what the Servers of one namespace (a project) may hold (Nova's quotas:
    instances, cores, ram). Unset is unlimited; several ComputeQuotas in a namespace all apply.
    Counted by the controller when it binds, so a burst never overshoots: a Server over a
    limit waits with ``Scheduled=False``/``QuotaExceeded`` until there is room."""

    servers: int | None = Field(default=None, ge=0, description="Servers bound at once.")
    vcpus: int | None = Field(default=None, ge=0, description="vCPUs of those Servers.")
    memoryMiB: int | None = Field(default=None, ge=0, description="Their memory in MiB.")


class ComputeQuotaStatus(StatusModel):
    conditions: list[Condition] = Field(default_factory=list, description="Unused for now.")


class ComputeQuota(KubeObject):
    KIND: ClassVar[str] = "ComputeQuota"
    PLURAL: ClassVar[str] = constants.COMPUTEQUOTAS
    spec: ComputeQuotaSpec = Field(default_factory=ComputeQuotaSpec)
    status: ComputeQuotaStatus = Field(default_factory=ComputeQuotaStatus)


# ----------------------------------------------------------------------------- Hypervisor


class HypervisorSpec(ApiModel):
    """What an admin sets on a host: whether it takes servers, its zone, its ratios."""

    disabled: bool = Field(default=False, description="A disabled host gets no new servers.")
    evacuate: bool = Field(
        default=False,
        description="Drain the host: live-migrate every server away (a few at a time) and "
        "place no new ones here. Progress is in status.evacuation.",
    )
    outOfService: bool = Field(
        default=False,
        description="The admin's word that the host is dead and fenced (powered off, cut from "
        "its storage; Nova's force-down, Kubernetes' out-of-service taint). While its agent is "
        "not heartbeating, its Servers can be deleted (the controller releases them) and are "
        "rebuilt on other hosts with the same identity. When the host comes back, its agent "
        "removes the stale domains before it starts anything. Clear it once the host is healthy.",
    )
    disabledReason: str | None = Field(default=None, max_length=255, description="Why.")
    availabilityZone: str = Field(default="nova", max_length=255, description="The host's zone.")
    cpuAllocationRatio: float | None = Field(
        default=None, ge=0.0, description="vCPUs per physical CPU (cluster default when unset)."
    )
    ramAllocationRatio: float | None = Field(
        default=None, ge=0.0, description="Virtual to physical memory (default when unset)."
    )
    diskAllocationRatio: float | None = Field(
        default=None, ge=0.0, description="Virtual to physical disk (default when unset)."
    )


class Resources(StatusModel):
    vcpus: int = Field(default=0, description="vCPUs.")
    memoryMiB: int = Field(default=0, description="Memory in MiB.")
    diskGiB: int = Field(default=0, description="Disk in GiB.")


class CpuInfo(StatusModel):
    arch: str = Field(default="", description="CPU architecture, e.g. x86_64.")
    model: str = Field(default="", description="libvirt CPU model name of the host.")
    vendor: str = Field(default="", description="CPU vendor.")
    features: list[str] = Field(default_factory=list, description="CPU feature flags.")
    sockets: int = Field(default=0, description="Sockets.")
    cores: int = Field(default=0, description="Cores per socket.")
    threads: int = Field(default=0, description="Threads per core.")


class MigrationEndpoint(StatusModel):
    libvirtURI: str = Field(description="How a peer's libvirtd reaches this host's libvirtd.")
    address: str = Field(description="The address migration data is sent to on this host.")


class Evacuation(StatusModel):
    """Progress of draining the host (written by the controller)."""

    total: int = Field(default=0, description="Servers on the host when the drain began.")
    migrated: int = Field(default=0, description="Moved away.")
    inProgress: int = Field(default=0, description="Moving now.")
    remaining: int = Field(default=0, description="Still on the host.")
    blocked: list[str] = Field(
        default_factory=list, description="Servers that cannot move, each with why."
    )


class HypervisorStatus(StatusModel):
    hostUUID: str | None = Field(default=None, description="The host's UUID from libvirt.")
    hypervisorType: str | None = Field(default=None, description="QEMU, or Test.")
    hypervisorVersion: str | None = Field(default=None, description="QEMU version.")
    libvirtVersion: str | None = Field(default=None, description="libvirt version.")
    virtType: str | None = Field(default=None, description="Domain type used: kvm or qemu.")
    cpuInfo: CpuInfo | None = Field(default=None, description="The host CPU.")
    guestCPU: str | None = Field(
        default=None,
        description="The CPU this host offers guests (libvirt's host-model CPU for its virt "
        "type), as libvirt CPU XML: the input of the cluster CPU baseline.",
    )
    migration: MigrationEndpoint | None = Field(
        default=None, description="Where live migrations to this host go."
    )
    evacuation: Evacuation | None = Field(default=None, description="Drain progress.")
    guestArchitectures: list[str] = Field(
        default_factory=list, description="Guest CPU architectures the host can run."
    )
    firmwares: list[str] = Field(
        default_factory=list,
        description="Guest firmwares the host has: bios, uefi, uefi-secure-boot (OVMF with "
        "secure boot and enrolled keys).",
    )
    machineTypes: list[str] = Field(
        default_factory=list,
        description="QEMU machine types the host runs for its own architecture (aliases such "
        "as pc and q35 and the versioned names).",
    )
    total: Resources | None = Field(default=None, description="Physical capacity.")
    reserved: Resources | None = Field(default=None, description="Kept for the host itself.")
    used: Resources | None = Field(default=None, description="Claimed by servers on this host.")
    free: Resources | None = Field(
        default=None, description="total - reserved - used, before allocation ratios."
    )
    runningVMs: int = Field(default=0, description="Domains running now.")
    bootTime: dt.datetime | None = Field(
        default=None, description="When the host booted (the kernel's btime): its uptime."
    )
    network: HostNetworking | None = Field(
        default=None, description="Tunnel address and physical networks of this host."
    )
    lastHeartbeatTime: dt.datetime | None = Field(default=None, description="Last heartbeat.")
    observedGeneration: int | None = Field(
        default=None,
        description="The .metadata.generation the controller last acted on (written with Up).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (the agent: libvirt reachable), Up (the controller: heartbeating), "
        "Stalled (the controller: True while the host is down).",
    )


class Hypervisor(KubeObject):
    KIND: ClassVar[str] = "Hypervisor"
    PLURAL: ClassVar[str] = constants.HYPERVISORS
    spec: HypervisorSpec = Field(default_factory=HypervisorSpec)
    status: HypervisorStatus = Field(default_factory=HypervisorStatus)


# ----------------------------------------------------------------------------- ServerMigration


class MigrationPhase(enum.StrEnum):
    Pending = "Pending"
    PreChecking = "PreChecking"
    Preparing = "Preparing"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"


TERMINAL_PHASES = (MigrationPhase.Succeeded, MigrationPhase.Failed)


class CompletionAction(enum.StrEnum):
    """What happens when a live migration has not converged in time."""

    Abort = "Abort"
    PostCopy = "PostCopy"
    Pause = "Pause"


DURATION = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``150s``, ``2m`` or ``500ms``."""
    for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * factor
    raise ValueError(f"not a duration: {text!r}")


class ServerMigrationSpec(ApiModel):
    """Move a server to another host: live when it runs (or is paused), cold when it is off."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            ("self == oldSelf", "a ServerMigration's spec is immutable; create a new one"),
            (
                "!has(self.completionAction) || self.completionAction != 'PostCopy' || "
                "(has(self.allowPostCopy) && self.allowPostCopy)",
                "completionAction PostCopy needs allowPostCopy: true",
            ),
        )
    }

    serverRef: str = Field(
        min_length=1, max_length=253, description="The Server to move (same namespace)."
    )
    targetNode: str | None = Field(
        default=None,
        max_length=253,
        description="The host to move to; empty lets the scheduler pick one with the same "
        "filters as for placement.",
    )
    bandwidthMiBps: int = Field(
        default=0, ge=0, description="Bandwidth limit of the migration stream; 0 is unlimited."
    )
    autoConverge: bool = Field(
        default=False, description="Throttle the guest's vCPUs when memory dirties too fast."
    )
    allowPostCopy: bool = Field(
        default=False,
        description="Allow switching to post-copy (the guest runs on the target while the rest "
        "of its memory follows); needed for completionAction PostCopy.",
    )
    completionTimeoutPerGiB: Annotated[str, StringConstraints(pattern=DURATION)] = Field(
        default="150s",
        description="How long the migration may take per GiB of memory (plus disk for a block "
        "migration; at least 2 GiB counted, as Nova does) before completionAction; 0s never.",
    )
    flavorRef: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Resize: the Flavor the server boots with on the target, which must be "
        "the Server's spec.flavorRef (a resize is declared on the Server; changing a stopped "
        "Server's flavorRef creates such a ServerMigration by itself). Only for a stopped "
        "server (a cold migration).",
    )
    completionAction: CompletionAction = Field(
        default=CompletionAction.Abort,
        description="On timeout: Abort (the guest stays on the source), PostCopy (switch to "
        "post-copy and finish), or Pause (pause the guest so the copy converges).",
    )


class MigrationProgress(StatusModel):
    dataTotalBytes: int = Field(default=0, description="Bytes to transfer (memory + disk).")
    dataProcessedBytes: int = Field(default=0, description="Bytes transferred so far.")
    dataRemainingBytes: int = Field(default=0, description="Bytes still to transfer.")
    diskProcessedBytes: int = Field(default=0, description="Of those, disk bytes transferred.")
    memoryIterations: int = Field(default=0, description="Passes over the guest's memory.")
    elapsedMs: int = Field(default=0, description="Time since the migration began.")
    downtimeMs: int | None = Field(
        default=None, description="How long the guest was stopped (known at the end)."
    )
    percent: int = Field(default=0, ge=0, le=100, description="Rough progress.")


class SourceStep(enum.StrEnum):
    """The source agent's part of a migration, in order (what its report says)."""

    Waiting = "Waiting"
    """Nothing reported yet."""
    Reported = "Reported"
    """The guest's CPU and the storage probe are reported."""
    Started = "Started"
    """The libvirt migration (or the disk copy) began."""
    Succeeded = "Succeeded"
    Failed = "Failed"


class TargetStep(enum.StrEnum):
    """The target agent's part of a migration, in order (what its report says)."""

    Waiting = "Waiting"
    """Waiting for the source's report."""
    Checked = "Checked"
    """CPU compatible and storage probed."""
    Prepared = "Prepared"
    """Images and disks are in place."""
    Arrived = "Arrived"
    """The guest runs here as a persistent domain."""
    Refused = "Refused"
    """The checks or the preparation failed (reason and message say why)."""
    CleanedUp = "CleanedUp"
    """After a failed migration: nothing of the guest is left here."""


class MigrationSourceReport(StatusModel):
    """Written by the source host's agent."""

    guestCPU: str | None = Field(default=None, description="The guest's CPU definition (XML).")
    arch: str | None = Field(default=None, description="The guest's architecture.")
    storageProbe: str | None = Field(
        default=None,
        description="A file the source wrote in its instances folder; the target sees it "
        "only if that folder is shared.",
    )
    started: bool = Field(default=False, description="The libvirt migration was started.")
    result: str | None = Field(default=None, description="Succeeded or Failed.")
    reason: str | None = Field(default=None, description="Why it failed.")
    message: str | None = Field(default=None, description="What happened.")

    @property
    def step(self) -> SourceStep:
        if self.result in (SourceStep.Succeeded, SourceStep.Failed):
            return SourceStep(self.result)
        if self.started:
            return SourceStep.Started
        return SourceStep.Reported if self.storageProbe else SourceStep.Waiting


class MigrationTargetReport(StatusModel):
    """Written by the target host's agent."""

    checked: bool = Field(default=False, description="The target's checks ran.")
    compatible: bool = Field(default=False, description="The checks passed.")
    reason: str | None = Field(default=None, description="Why the target refused.")
    message: str | None = Field(default=None, description="What the checks found.")
    sharedStorage: bool | None = Field(
        default=None, description="The instances folder is shared with the source."
    )
    prepared: bool = Field(default=False, description="Images and disks are in place.")
    arrived: bool = Field(
        default=False,
        description="The guest runs here as a persistent domain: the move completed (how the "
        "controller decides when the source host is down).",
    )
    cleanedUp: bool = Field(default=False, description="After a failure: nothing is left.")

    @property
    def step(self) -> TargetStep:
        """The report's flags read as one ordered step."""
        if self.cleanedUp:
            return TargetStep.CleanedUp
        if self.checked and not self.compatible:
            return TargetStep.Refused
        if self.arrived:
            return TargetStep.Arrived
        if self.prepared:
            return TargetStep.Prepared
        return TargetStep.Checked if self.checked else TargetStep.Waiting

    def at(self, step: TargetStep, reason: str | None = None, message: str | None = None) -> Self:
        """This report moved on to ``step`` (the flags of every step before it kept)."""
        out = self.model_copy()
        if step is TargetStep.Refused:
            out.checked, out.compatible = True, False
        elif step is TargetStep.CleanedUp:
            out.cleanedUp = True
        else:
            out.checked = out.compatible = True
            out.prepared = step in (TargetStep.Prepared, TargetStep.Arrived) or out.prepared
            out.arrived = step is TargetStep.Arrived or out.arrived
        if reason is not None:
            out.reason = reason
        if message is not None:
            out.message = message
        return out


class Outcome(StatusModel):
    """Why something ended or must end: a reason a program can match and words for people."""

    reason: str = Field(description="One CamelCase word, e.g. TargetDown or Cancelled.")
    message: str = Field(default="", description="What happened, for a person.")

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason


class ServerMigrationStatus(StatusModel):
    phase: MigrationPhase | None = Field(default=None, description="Where the migration is.")
    serverUID: str | None = Field(default=None, description="The Server's UID.")
    sourceNode: str | None = Field(default=None, description="The host it moves from.")
    targetNode: str | None = Field(default=None, description="The host it moves to.")
    live: bool | None = Field(default=None, description="Live (running guest) or cold.")
    flavor: FlavorSnapshot | None = Field(
        default=None, description="The size the server has on the target."
    )
    blockMigration: bool | None = Field(
        default=None, description="Disks are copied (not shared between the hosts)."
    )
    abortRequested: Outcome | None = Field(
        default=None, description="Why the controller asked the source to abort."
    )
    reason: str | None = Field(default=None, description="Why it ended as it did.")
    message: str | None = Field(default=None, description="What happened, for people.")
    startedAt: dt.datetime | None = Field(default=None, description="When it was accepted.")
    completedAt: dt.datetime | None = Field(default=None, description="When it ended.")
    progress: MigrationProgress | None = Field(
        default=None, description="Data processed and remaining, iterations, downtime."
    )
    source: MigrationSourceReport | None = Field(default=None, description="Source agent.")
    target: MigrationTargetReport | None = Field(default=None, description="Target agent.")
    observedGeneration: int | None = Field(
        default=None, description="The .metadata.generation the controller last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Reconciling (True while it runs), Stalled (True when it failed), "
        "Succeeded (once it ended).",
    )


class ServerMigration(KubeObject):
    KIND: ClassVar[str] = "ServerMigration"
    PLURAL: ClassVar[str] = constants.SERVERMIGRATIONS
    spec: ServerMigrationSpec
    status: ServerMigrationStatus = Field(default_factory=ServerMigrationStatus)

    @property
    def phase(self) -> MigrationPhase:
        return self.status.phase or MigrationPhase.Pending

    @property
    def active(self) -> bool:
        """Not ended yet (neither Succeeded nor Failed)."""
        return self.phase not in TERMINAL_PHASES
