"""Making one Server real on this host, level-triggered: compare what the Server asks for with
what the hypervisor has and close the gap. Safe to run any number of times and to kill at any
moment: the domain's UUID is the Server's UID, disks and cache entries are named after stable
keys, and the finalizer is in place before anything is created on the host.

Everything here works on the typed :class:`~kubenova_api.resources.Server` and on the driver
contract (:mod:`kubenova_agent.driver`), so the decisions can be tested with fakes of both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import pathlib
import time
from collections.abc import Callable
from typing import Protocol

from kubenova_agent import bootwatch, configdrive, driver, images, restartbackoff, softstop
from kubenova_agent.driver import GuestInfo, State, StopReason
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_agent.network import guestdata
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, constants
from kubenova_api.common import ConditionStatus
from kubenova_api.kube import ObjectRef, RetryLater
from kubenova_api.resources import (
    DiskFormat,
    FirmwareType,
    FlavorSnapshot,
    Image,
    ImageProperties,
    ImageSource,
    Phase,
    PowerState,
    RebootType,
    RestartPolicy,
    SecureBoot,
    Server,
    ServerStatus,
)

log = logging.getLogger(__name__)

GIB = 1 << 30


class KubeCalls(Protocol):
    """The Kubernetes calls reconciling makes (:class:`kubenova_api.kube.Kube` has them)."""

    def get(self, kind: type[Image], name: str, namespace: str | None = None) -> Image | None: ...
    def add_finalizer(self, obj: Server, name: str) -> Server: ...
    def remove_finalizer(self, ref: ObjectRef, name: str) -> None: ...
    def apply_status(
        self,
        ref: ObjectRef,
        status: ServerStatus,
        *,
        resource_version: str | None = None,
        force: bool = False,
    ) -> object: ...
    def put_configmap(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        *,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        owner: ObjectRef | None = None,
    ) -> None: ...
    def event(
        self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False
    ) -> None: ...


class ImageFiles(Protocol):
    """The host's image cache (:class:`kubenova_agent.images.ImageCache`)."""

    def path_of(self, sha256: str) -> pathlib.Path: ...
    def ensure(self, url: str, sha256: str, kind: str) -> pathlib.Path: ...


@dataclasses.dataclass
class Deps:
    """What reconciling needs: the settings and one handle per outside system."""

    settings: AgentSettings
    kube: KubeCalls
    guests: driver.Guests
    storage: driver.Storage
    images: ImageFiles
    virt_type: domain_xml.VirtType
    written: dict[str, ServerStatus] = dataclasses.field(default_factory=dict)
    """The status last written per Server UID: the informer's copy may lag behind it, and a
    write that changes nothing is a wasted API request."""
    console_served: dict[str, str] = dataclasses.field(default_factory=dict)
    hold: Callable[[str, Server | None], str | None] | None = None
    """Why a guest must be left alone (it is migrating away), by Server UID (and the copy of
    the Server being reconciled)."""
    moved_away: Callable[[str, Server | None], bool] | None = None
    """Whether a guest has just migrated away (the target deletes it when asked)."""
    guest_cpu: Callable[[Server], str | None] | None = None
    """The ``<cpu>`` XML a new guest of this Server gets (None: the hypervisor's default)."""
    nics: Callable[[Server], list[tuple[domain_xml.Interface, guestdata.Nic]]] | None = None
    """The Server's NICs in order (its networks plumbed on this host first): the domain's
    interfaces and ``network_data.json`` on the config drive. None: no NIC."""
    release_nics: Callable[[str], None] | None = None
    """A guest that was to arrive by a migration will not (by Server UID): its networks
    need not stay on this host for it."""
    cpus: driver.CpuChecks | None = None
    """Whether this host can run that CPU (None: not asked, as on libvirt's test driver)."""
    stops: softstop.SoftStops = dataclasses.field(init=False)
    """Soft stops (``powerState: Stopped``) waiting for the guest, by Server UID."""
    reboots: softstop.SoftStops = dataclasses.field(init=False)
    """Soft reboots waiting for the guest to go off before it is started again."""
    restarts: restartbackoff.RestartBackoff = dataclasses.field(
        default_factory=restartbackoff.RestartBackoff
    )
    """CrashLoopBackOff of guests that keep stopping by themselves."""
    rebuilt: dict[str, bool] = dataclasses.field(default_factory=dict)
    """Evacuated Servers rebuilt here: whether from the image (True) or on a shared disk."""
    boots: bootwatch.BootWatch | None = None
    """Boots this agent started, watched for the firmware finding nothing to boot."""

    def __post_init__(self) -> None:
        limit = self.settings.max_shutdown_timeout_seconds
        self.stops = softstop.SoftStops(self.guests, limit)
        self.reboots = softstop.SoftStops(self.guests, limit)

    def forget(self, uid: str) -> None:
        """Drop what is kept in memory about a Server that is gone from this host."""
        self.written.pop(uid, None)
        self.console_served.pop(uid, None)
        self.stops.cancel(uid)
        self.reboots.cancel(uid)
        self.restarts.forget(uid)
        self.rebuilt.pop(uid, None)
        if self.boots is not None:
            self.boots.forget(uid)


class Permanent(Exception):
    """The Server cannot run as specified; it goes to ERROR until its spec changes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HostFailed(Exception):
    """A hypervisor call failed (libvirt said no, or is gone): said in the status and an
    Event, then retried with the work queue's back-off."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Libvirt:
    """``with _Libvirt("StartFailed", "starting the domain"):`` turns a hypervisor error into
    :class:`HostFailed` with that reason and what was being done."""

    def __init__(self, reason: str, doing: str) -> None:
        self.reason = reason
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, errors.HypervisorError):
            raise HostFailed(self.reason, f"{self.doing} failed: {exc}") from exc


def server_ref(server: Server) -> ObjectRef:
    return ObjectRef.to(server)


def volume_prefix(uid: str) -> str:
    return f"{uid}-"


def console_path(settings: AgentSettings, uid: str) -> str:
    return os.path.join(settings.consoles_dir, f"{uid}.log")


@dataclasses.dataclass
class Converged:
    """What converging did, for the status report."""

    guest: GuestInfo
    refused: str | None = None
    """Why the declared state cannot be reached from the current one (nothing was tried)."""
    reboot_seen: dt.datetime | None = None
    rebuild_seen: dt.datetime | None = None
    restarted: int = 0
    backoff: restartbackoff.Wait | None = None
    """The guest stopped by itself again and waits for its CrashLoopBackOff to end."""
    recheck: float | None = None
    """Look again after this many seconds (a soft stop waiting, a back-off ending)."""
    rebooting: bool = False
    """A soft reboot waits for the guest to go off."""
    stopping: str | None = None
    """A soft stop waits for the guest to go off (what is said in ``Converged``)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """What the status should say about the Server besides the guest itself."""

    error: tuple[str, str] | None = None
    waiting: tuple[str, str] | None = None
    """Why the declared state is not reached yet (a transient failure, or a dependency)."""
    converged: Converged | None = None
    migrating: str | None = None
    boot_failed: str | None = None


def reconcile_server(deps: Deps, server: Server) -> float | None:
    """Bring the host in line with ``server``; returns seconds until it should be looked at
    again (None: only when something changes).

    Whatever stops it is said at once in the Server's status (a condition with a reason and a
    message) and, when the reason is new, in an Event: a spec that cannot run here is
    :class:`Permanent` (ERROR until the spec changes), a dependency not there yet is
    :class:`RetryLater` (looked at again after its delay), and a hypervisor call that failed is
    raised again after the report, so that the work queue retries it with back-off."""
    meta = server.metadata
    if meta.deleting:
        if deps.moved_away is not None and deps.moved_away(meta.uid, server):
            return None  # rebound to the target in a moment; its agent tears it down there
        delete_server(deps, server)
        return None
    status = server.status
    if status.nodeName != deps.settings.host_name:
        return None  # rebound elsewhere meanwhile
    held = deps.hold(meta.uid, server) if deps.hold is not None else None
    if held is not None:
        moving = deps.guests.get(meta.uid)
        if moving is not None and moving.alive:
            report(deps, server, moving, Report(migrating=held))
        return None  # the migration owns the guest until it ends
    ready = common.get_condition(status.conditions, "Ready")
    if (
        status.phase is Phase.ERROR
        and status.observedGeneration == meta.generation
        and ready is not None
        and ready.reason in PERMANENT_REASONS
    ):
        return None  # nothing new to try until the spec changes
    # Servers are born with it (deploy/admission/domain-finalizer.yaml): no write, unless this
    # one was made without the policy.
    server = deps.kube.add_finalizer(server, constants.FINALIZER_DOMAIN)
    guest: GuestInfo | None = None
    try:
        guest = deps.guests.get(meta.uid)
        if guest is None:
            guest = define(deps, server)
        before = guest.state
        converged = converge(deps, server, guest)
        delay, failed = _watch_boot(deps, server, before, converged)
    except Permanent as exc:
        report(deps, server, None, Report(error=(exc.reason, str(exc))))
        return None
    except RetryLater as exc:
        report(
            deps, server, _guest_now(deps, meta.uid, guest), Report(waiting=(exc.reason, str(exc)))
        )
        return exc.delay
    except (HostFailed, errors.HypervisorError) as exc:
        reason = exc.reason if isinstance(exc, HostFailed) else "LibvirtError"
        report(deps, server, _guest_now(deps, meta.uid, guest), Report(waiting=(reason, str(exc))))
        raise RetryLater(reason, str(exc)) from exc
    report(deps, server, converged.guest, Report(converged=converged, boot_failed=failed))
    serve_console(deps, server)
    looks = [t for t in (converged.recheck, delay) if t is not None]
    return min(looks) if looks else None


def _watch_boot(
    deps: Deps, server: Server, before: State, out: Converged
) -> tuple[float | None, str | None]:
    """Watch a boot this pass started; (seconds until the next look, why it did not boot)."""
    watch, uid = deps.boots, server.uid
    if watch is None or out.guest.state is not State.running:
        return None, None
    console = console_path(deps.settings, uid)
    booted_now = before in (State.shutoff, State.crashed) or (
        out.reboot_seen is not None or out.rebuild_seen is not None or out.restarted > 0
    )
    if booted_now:
        watch.started(uid, console)
    delay = watch.check(uid, console)
    return delay, watch.failed.get(uid)


def _guest_now(deps: Deps, uid: str, known: GuestInfo | None) -> GuestInfo | None:
    """The guest as it is after a failure, for the report (as last seen if libvirt is down)."""
    try:
        return deps.guests.get(uid)
    except errors.HypervisorError:
        return known


def define(deps: Deps, server: Server) -> GuestInfo:
    """Define the Server's domain (images, disks and config drive first)."""
    found = _disk_found(deps, server)
    xml = domain_xml_of(domain_config(deps, server))
    with _Libvirt("DefineFailed", "defining the domain"):
        deps.guests.define(xml)
    log.info("defined the domain of %s", server.full_name)
    guest = deps.guests.get(server.uid)
    if guest is None:
        raise RetryLater("SpawnFailed", "domain vanished right after it was defined")
    if found is not None:
        _rebuilt(deps, server, found)
    return guest


def _disk_found(deps: Deps, server: Server) -> bool | None:
    """For a Server evacuated from a dead host and not rebuilt yet: whether its root disk is
    here already (the instances folder is shared with that host). None otherwise."""
    status = server.status
    if status.evacuatedFrom is None or status.diskRebuilt is not None or server.uid in deps.rebuilt:
        return None
    return bool(deps.storage.volumes(f"{volume_prefix(server.uid)}root"))


def _rebuilt(deps: Deps, server: Server, found: bool) -> None:
    deps.rebuilt[server.uid] = not found
    here, dead = deps.settings.host_name, server.status.evacuatedFrom
    if found:
        _event(
            deps,
            server,
            "RebuiltFromSharedDisk",
            f"rebuilt on {here} on its own disk (shared storage) after host {dead} went out "
            "of service",
        )
    else:
        _event(
            deps,
            server,
            "RebuiltFromImage",
            f"rebuilt on {here} from image {server.spec.imageRef} after host {dead} went out "
            f"of service: its disk on {dead} is lost",
            warn=True,
        )


def domain_xml_of(cfg: domain_xml.DomainConfig) -> str:
    """The domain XML, or :class:`Permanent` when a value of the spec cannot be XML."""
    try:
        return domain_xml.build_domain_xml(cfg)
    except domain_xml.InvalidText as exc:
        raise Permanent("InvalidSpec", str(exc)) from exc


PERMANENT_REASONS = {
    "ImageChecksumMismatch",
    "ImageFormatInvalid",
    "FlavorDiskTooSmall",
    "ImageFetchFailed",
    "InvalidSpec",
    "CPUModelMissing",
    *images.PERMANENT_REASONS,
    *(reason.value for reason in driver.CpuReason),
}


# ----------------------------------------------------------------------------- building


def _image(deps: Deps, name: str) -> Image:
    image = deps.kube.get(Image, name)
    if image is None:
        raise RetryLater("ImageNotFound", f"Image {name} does not exist", 10.0)
    return image


def _pinned(deps: Deps, server: Server) -> tuple[ImageSource, str, ImageProperties]:
    """The source, architecture and properties of the Server's own image: the bits pinned in
    its status when it was bound (never re-resolved by name), or, for a Server bound before
    pins existed or rebuilt from another Image since, its Image as it is now."""
    pin = server.status.image
    if pin is not None and pin.name == server.spec.imageRef:
        props = pin.properties
        if props is None:  # pinned before pins carried properties
            found = deps.kube.get(Image, server.spec.imageRef)
            props = found.spec.properties if found is not None else ImageProperties()
        return pin.source(), pin.architecture.value, props
    image = _image(deps, server.spec.imageRef)
    return image.spec.source, image.spec.architecture.value, image.spec.properties


def domain_config(deps: Deps, server: Server) -> domain_xml.DomainConfig:
    """The domain the Server should have now: fetches images and creates disks and the config
    drive as needed (each step idempotent). In rescue, the rescue image boots with the server's
    own disk attached second."""
    spec, flavor = server.spec, server.status.flavor
    if flavor is None:
        raise RetryLater("WaitingForFlavor", "the controller has not recorded the flavor yet", 2.0)
    uid = server.uid
    source, arch, props = _pinned(deps, server)
    cpu_xml = guest_cpu(deps, server, arch)
    # The image that boots decides the hardware (the rescue image's, in rescue).
    bus = props.disk_bus.value
    try:
        boot, disk_source = _fetch(deps, server, source)
        root = _root_disk(
            deps,
            f"{volume_prefix(uid)}root.qcow2",
            flavor,
            disk_source,
            domain_xml.disk_target(bus, 0),
            bus,
        )
        disks = [root]
        if spec.rescue is not None:
            rescue_with = source
            if spec.rescue.imageRef and spec.rescue.imageRef != spec.imageRef:
                rescue_image = _image(deps, spec.rescue.imageRef).spec
                rescue_with, props = rescue_image.source, rescue_image.properties
                bus = props.disk_bus.value
            boot, rescue_source = _fetch(deps, server, rescue_with)
            rescue_root = _root_disk(
                deps,
                f"{volume_prefix(uid)}rescue.qcow2",
                flavor,
                rescue_source,
                domain_xml.disk_target(bus, 0),
                bus,
            )
            disks = [
                rescue_root,
                dataclasses.replace(root, target=domain_xml.disk_target(bus, 1), bus=bus),
            ]
    except images.ImageError as exc:
        if exc.transient:
            raise RetryLater(exc.reason, str(exc), exc.retry_after) from exc
        raise Permanent(exc.reason, str(exc)) from exc
    except errors.HypervisorError as exc:
        raise RetryLater("StorageFailed", f"creating the disk failed: {exc}", 5.0) from exc
    nics = deps.nics(server) if deps.nics is not None else []
    network_data = guestdata.network_data([nic for _, nic in nics]) if nics else None
    drive = deps.storage.ensure_file_volume(
        f"{volume_prefix(uid)}config.iso",
        lambda path: configdrive.write(
            path, configdrive.metadata_of(server), spec, network_data=network_data
        ),
    )
    on_virtio = sum(1 for d in disks if d.bus == "virtio")
    disks.append(
        domain_xml.Disk(
            drive, format="raw", target=domain_xml.disk_target("virtio", on_virtio), readonly=True
        )
    )
    pathlib.Path(deps.settings.consoles_dir).mkdir(parents=True, exist_ok=True)
    return domain_xml.DomainConfig(
        owner=domain_xml.Owner(server.namespace or "", server.name, uid),
        virt_type=deps.virt_type,
        vcpus=flavor.vcpus,
        memory_mib=flavor.memoryMiB,
        disks=tuple(disks),
        console_log=console_path(deps.settings, uid),
        boot=boot,
        flavor_name=spec.flavorRef,
        image_name=spec.imageRef,
        arch=arch,
        rescue=spec.rescue is not None,
        cpu_xml=cpu_xml,
        disk_cache=deps.settings.disk_cache,
        interfaces=tuple(interface for interface, _ in nics),
        firmware=firmware_of(deps, uid, props),
        machine=props.machine_type,
        rng=props.hw_rng_model is not None,
        video=props.hw_video_model.value if props.hw_video_model is not None else None,
    )


def nvram_name(uid: str) -> str:
    """The Server's UEFI variable store: a file of its storage pool, so that it goes with the
    Server's disks (copied on a move, deleted with the Server)."""
    return f"{volume_prefix(uid)}nvram.fd"


def firmware_of(deps: Deps, uid: str, props: ImageProperties) -> domain_xml.Firmware | None:
    """UEFI as the image's properties ask for it; None is BIOS."""
    if props.firmware is not FirmwareType.uefi:
        return None
    secure = {
        None: False,
        SecureBoot.disabled: False,
        SecureBoot.required: True,
        SecureBoot.optional: None,
    }[props.os_secure_boot]
    nvram = os.path.join(deps.settings.instances_dir, nvram_name(uid))
    return domain_xml.Firmware(nvram=nvram, secure_boot=secure)


def guest_cpu(deps: Deps, server: Server, arch: str) -> str | None:
    """The ``<cpu>`` of a new guest of ``server``, checked against what this host's libvirt
    can give (before anything is fetched: a refusal is said within seconds)."""
    if deps.guest_cpu is None:
        return None
    try:
        cpu_xml = deps.guest_cpu(server)
    except domain_xml.InvalidText as exc:
        raise Permanent("InvalidSpec", str(exc)) from exc
    except ValueError as exc:
        raise Permanent(
            "CPUModelMissing",
            f"{exc}: the Flavor asks for hw:cpu_mode custom without hw:cpu_model, and this "
            "host's agent has no --cpu-model",
        ) from exc
    if cpu_xml is None or deps.cpus is None or deps.virt_type is domain_xml.VirtType.test:
        return cpu_xml
    with _Libvirt("CPUCheckFailed", "asking libvirt which CPUs this host can give"):
        refusal = deps.cpus.check(cpu_xml, arch, deps.virt_type.value)
    if refusal is not None:
        raise Permanent(refusal.reason.value, f"{deps.settings.host_name}: {refusal.message}")
    return cpu_xml


def _cached(deps: Deps, server: Server, url: str, sha256: str, kind: str) -> pathlib.Path:
    """The image file from the host's cache, inspected as a ``kind`` (qcow2, raw, kernel,
    ramdisk); a fresh download is told in an Event."""
    fresh = not deps.images.path_of(sha256).exists()
    started = time.monotonic()
    path = deps.images.ensure(url, sha256, kind)
    if fresh:
        size = path.stat().st_size / (1 << 20)
        took = time.monotonic() - started
        _event(
            deps,
            server,
            "ImageFetched",
            f"fetched {url} ({size:.1f} MiB) in {took:.1f}s to {deps.settings.host_name}; "
            "sha256 verified",
        )
    return path


def _fetch(
    deps: Deps, server: Server, source: ImageSource
) -> tuple[domain_xml.DirectKernelBoot | None, tuple[pathlib.Path, DiskFormat] | None]:
    boot = None
    disk = source.disk
    if source.uec is not None:
        uec = source.uec
        kernel = _cached(deps, server, uec.kernel.url, uec.kernel.sha256, "kernel")
        ramdisk = _cached(deps, server, uec.ramdisk.url, uec.ramdisk.sha256, "ramdisk")
        boot = domain_xml.DirectKernelBoot(str(kernel), str(ramdisk), uec.cmdline)
        disk = uec.disk
    if disk is None:
        return boot, None
    path = _cached(deps, server, disk.url, disk.sha256, disk.format.value)
    return boot, (path, disk.format)


def _root_disk(
    deps: Deps,
    volume: str,
    flavor: FlavorSnapshot,
    disk: tuple[pathlib.Path, DiskFormat] | None,
    target: str,
    bus: str = "virtio",
) -> domain_xml.Disk:
    flavor_bytes = flavor.diskGiB * GIB
    if disk is None:
        capacity = flavor_bytes or GIB
        backing = None
    else:
        path, fmt = disk
        image_bytes = images.virtual_size(path, fmt.value)
        if flavor_bytes and flavor_bytes < image_bytes:
            raise images.ImageError(
                f"the flavor's {flavor.diskGiB} GiB disk is smaller than the image's "
                f"{image_bytes / GIB:.1f} GiB",
                reason="FlavorDiskTooSmall",
                transient=False,
            )
        capacity = max(flavor_bytes, image_bytes)
        backing = driver.Backing(str(path), fmt.value)
    path_str = deps.storage.ensure_volume(volume, capacity, backing)
    if deps.storage.grow_volume(volume, capacity):  # resized to a bigger flavor
        log.info("grew %s to %.1f GiB", volume, capacity / GIB)
    return domain_xml.Disk(path=path_str, format="qcow2", target=target, bus=bus)


# ----------------------------------------------------------------------------- converging


def _event(deps: Deps, server: Server, reason: str, message: str, warn: bool = False) -> None:
    deps.kube.event(server_ref(server), reason, message, warning=warn)


def converge(deps: Deps, server: Server, guest: GuestInfo) -> Converged:
    """Move the guest toward what the spec declares: rescue, a reboot request, power state."""
    spec = server.spec
    out = Converged(guest)
    want_rescue = spec.rescue is not None
    _rebuild_if_asked(deps, server, out)
    if want_rescue != domain_xml.is_rescue(out.guest.xml):
        out.guest = switch_rescue(deps, server, want_rescue)
    if want_rescue:
        if out.guest.state is not State.running:
            deps.guests.discard_saved(server.uid)
            _start(deps, server.uid)
            out.guest = _refresh(deps, server.uid)
        if spec.powerState is not PowerState.Running:
            out.refused = "a rescued server stays running; unrescue it first"
        return out
    _reboot_if_asked(deps, server, out)
    if not out.rebooting:
        _converge_power(deps, server, out)
    return out


def _refresh(deps: Deps, uid: str) -> GuestInfo:
    guest = deps.guests.get(uid)
    if guest is None:
        raise RetryLater("DomainVanished", "the domain disappeared while being changed", 1.0)
    return guest


def _start(deps: Deps, uid: str) -> None:
    with _Libvirt("StartFailed", "starting the domain"):
        deps.guests.start(uid)


def _sooner(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def switch_rescue(deps: Deps, server: Server, to_rescue: bool) -> GuestInfo:
    """Rescue: stop the guest and boot the rescue image with the guest's disk as the second
    disk. Unrescue: stop the rescue guest, drop its disk and boot the original again."""
    uid = server.uid
    xml = domain_xml_of(domain_config(deps, server))
    deps.guests.destroy(uid)
    deps.guests.discard_saved(uid)
    with _Libvirt("DefineFailed", "defining the domain"):
        deps.guests.define(xml)
    if not to_rescue:
        deps.storage.delete_volumes(f"{volume_prefix(uid)}rescue")
    _start(deps, uid)
    if to_rescue:
        _event(deps, server, "Rescued", "booted the rescue image; the server's disk is /dev/vdb")
    else:
        _event(deps, server, "Unrescued", "booted the server's own disk again")
    return _refresh(deps, uid)


def _waiting_note(wait: softstop.Waiting, asked: int) -> str:
    note = f"forced off after {wait.timeout:.0f}s"
    if wait.capped:
        note += f" (the host's maximum; the Server asks for {asked}s)"
    return note


def _rebuild_if_asked(deps: Deps, server: Server, out: Converged) -> None:
    """Nova's rebuild, once per request: the guest goes, its root disk, config drive and UEFI
    variables are made anew from ``imageRef``, and it is defined again (same UID, name, host
    and flavor); the power step that follows starts it if it is to run. Safe to repeat when
    interrupted: the request counts as done only once the status says so."""
    spec, uid = server.spec, server.uid
    asked = spec.rebuildRequestedAt
    last = deps.written.get(uid)
    seen = server.status.observedRebuildRequestedAt or (
        last.observedRebuildRequestedAt if last is not None else None
    )
    if asked is None or asked == seen:
        return
    out.rebuild_seen = asked
    if spec.rescue is not None:
        _event(deps, server, "RebuildRefused", "a rescued server is not rebuilt", warn=True)
        return
    deps.guests.destroy(uid, force=True)
    deps.guests.discard_saved(uid)
    deps.guests.undefine(uid)
    deps.storage.delete_volumes(volume_prefix(uid))
    deps.guests.define(domain_xml_of(domain_config(deps, server)))
    out.guest = _refresh(deps, uid)
    _event(deps, server, "Rebuilt", f"rebuilt from Image {spec.imageRef}")


def _reboot_if_asked(deps: Deps, server: Server, out: Converged) -> None:
    """Act once on a new ``rebootRequestedAt``. A soft reboot presses the power button and
    comes back (``recheck``) until the guest is off or its time is up; no worker waits."""
    spec, uid = server.spec, server.uid
    asked = spec.rebootRequestedAt
    last = deps.written.get(uid)
    seen = server.status.observedRebootRequestedAt or (
        last.observedRebootRequestedAt if last is not None else None
    )
    if asked is None or asked == seen:
        deps.reboots.cancel(uid)
        return
    if spec.powerState is not PowerState.Running and deps.reboots.cancel(uid):
        out.reboot_seen = asked  # superseded by the power state declared since
        return
    hard = spec.rebootType is RebootType.Hard
    state = out.guest.state
    if deps.reboots.in_progress(uid) or (state is State.running and not hard):
        wait = deps.reboots.step(uid, state is State.running, float(spec.shutdownTimeoutSeconds))
        if isinstance(wait, softstop.Waiting):
            out.rebooting = True
            out.recheck = _sooner(out.recheck, wait.recheck)
            if wait.started:
                how = _waiting_note(wait, spec.shutdownTimeoutSeconds)
                _event(deps, server, "Rebooting", f"pressed the power button; {how}")
            return
        how = "soft"
        if isinstance(wait, softstop.Expired):
            deps.guests.destroy(uid, force=True)
            how = f"soft, then hard: no answer in {wait.timeout:.0f}s"
        _start(deps, uid)
        _event(deps, server, "Rebooted", f"rebooted ({how})")
    elif state is State.running:
        deps.guests.destroy(uid, force=True)
        _start(deps, uid)
        _event(deps, server, "Rebooted", "rebooted (hard)")
    elif hard and spec.powerState is PowerState.Running:
        deps.guests.discard_saved(uid)
        if state is State.paused:
            deps.guests.unpause(uid)
        else:
            _start(deps, uid)
        _event(deps, server, "Rebooted", f"hard reboot of a {state.value.lower()} server")
    else:
        _event(
            deps,
            server,
            "RebootRefused",
            f"a soft reboot needs a running server; this one is {state.value.lower()}",
            warn=True,
        )
    out.reboot_seen = asked
    out.guest = _refresh(deps, uid)


def _converge_power(deps: Deps, server: Server, out: Converged) -> None:
    """One step toward the declared power state, by the table of what each state allows."""
    want = server.spec.powerState
    uid = server.uid
    if want is not PowerState.Stopped and deps.stops.cancel(uid):
        log.info("%s: the soft stop under way is dropped: declared %s", server.full_name, want)
    state = out.guest.state
    if deps.stops.in_progress(uid) and state is not State.running:
        done = deps.stops.step(uid, False, float(server.spec.shutdownTimeoutSeconds))
        waited = done.waited if not isinstance(done, softstop.Waiting) else 0.0
        _event(deps, server, "Stopped", f"the guest shut down after {waited:.0f}s")
    step = POWER_STEPS.get((want, state))
    if step is not None:
        step(deps, server, out)
    elif want is PowerState.Paused and state is not State.paused:
        out.refused = f"cannot pause a server that is {_PHASES[state].value}"
    elif want is PowerState.Suspended and state is not State.suspended:
        out.refused = f"cannot suspend a server that is {_PHASES[state].value}"
    out.guest = _refresh(deps, uid)


def _unpause(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.unpause(server.uid)
    _event(deps, server, "Unpaused", "vCPUs running again")


def _resume(deps: Deps, server: Server, _out: Converged) -> None:
    _start(deps, server.uid)
    _event(deps, server, "Resumed", "memory restored from the managed-save image")


# The phases a Server reports once its guest has been built here (started, or defined and
# left off as declared): from then on a shut-off domain is SHUTOFF, whatever libvirt says of
# why it is off.
BUILT_PHASES = frozenset(
    {Phase.ACTIVE, Phase.SHUTOFF, Phase.SUSPENDED, Phase.PAUSED, Phase.RESCUE, Phase.MIGRATING}
)


def _never_run(deps: Deps, server: Server, guest: GuestInfo) -> bool:
    """Whether ``guest`` is a domain not yet started for its Server: libvirt says it was never
    started (``VIR_DOMAIN_SHUTOFF_UNKNOWN``) and the Server's status has never said it was
    built. libvirt keeps a shut-off domain's reason only while libvirtd runs: after libvirtd
    restarts, or the host reboots, every shut-off domain reads as never started, like one
    just defined. The status (the copy watched, or this agent's own last write when that copy
    lags behind it) tells the two apart."""
    if guest.stop_reason is not StopReason.never_started:
        return False
    last = deps.written.get(server.uid)
    said = (server.status.phase, last.phase if last is not None else None)
    return not any(phase in BUILT_PHASES for phase in said)


def _start_or_restart(deps: Deps, server: Server, out: Converged) -> None:
    """A stopped guest is started; one that stopped by itself (the spec unchanged since) is
    started again only as its restart policy says, and after its CrashLoopBackOff."""
    guest, status, uid = out.guest, server.status, server.uid
    unchanged_spec = status.observedGeneration == server.metadata.generation
    if guest.stop_reason is None or guest.stop_reason not in BY_GUEST or not unchanged_spec:
        deps.restarts.forget(uid)  # a person's wish, not a crash loop
        _start(deps, uid)
        # A first boot records no Event: it would only repeat the status written with it
        # (ACTIVE, ``Ready=True Running``, "running on <host>"), and in a burst of new Servers
        # it was an API server request per Server that only that said (about 12 % of the API
        # server's CPU: README, "Sizing the control plane"). A later start (a stopped Server
        # started again, after a libvirtd restart too) is history the status does not keep.
        if not _never_run(deps, server, guest):
            _event(
                deps, server, "Started", f"domain {guest.name} started on {deps.settings.host_name}"
            )
        return
    policy = server.spec.restartPolicy
    log.info(
        "%s: the guest stopped by itself (%s); restart policy %s",
        server.full_name,
        guest.stop_reason.value,
        policy.value,
    )
    restart = will_restart(policy, guest.stop_reason)
    ready = common.get_condition(status.conditions, "Ready")
    last = deps.written.get(uid)
    told = {ready.reason if ready is not None else None}
    if last is not None:
        said = common.get_condition(last.conditions, "Ready")
        told.add(said.reason if said is not None else None)
    if not told & {guest.stop_reason.value, restartbackoff.REASON}:
        # Say that it stopped before starting it again (a back-off said so already).
        report(deps, server, guest)
    if not restart:
        return
    decision = deps.restarts.decide(uid)
    if isinstance(decision, restartbackoff.Wait):
        out.backoff = decision
        out.recheck = _sooner(out.recheck, decision.remaining)
        return
    _start(deps, uid)
    out.restarted = 1
    again = f", {decision.attempt} times in a row" if decision.attempt > 1 else ""
    _event(deps, server, "Restarted", f"started again (restart policy {policy.value}{again})")


def _stop(deps: Deps, server: Server, out: Converged) -> None:
    """Press the power button and come back (``recheck``) until the guest is off or its
    time is up, then force it off: a soft stop holds no worker while it waits."""
    asked = server.spec.shutdownTimeoutSeconds
    wait = deps.stops.step(server.uid, True, float(asked))
    if isinstance(wait, softstop.Waiting):
        out.recheck = _sooner(out.recheck, wait.recheck)
        out.stopping = f"waiting up to {wait.remaining:.0f}s for the guest to power off"
        if wait.started:
            _event(
                deps, server, "Stopping", f"pressed the power button; {_waiting_note(wait, asked)}"
            )
        return
    if isinstance(wait, softstop.Off):
        _event(deps, server, "Stopped", "the guest shut down")
        return
    deps.guests.destroy(server.uid)
    _event(deps, server, "Stopped", f"forced off after {wait.timeout:.0f}s")


def _stop_paused(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.destroy(server.uid)
    _event(deps, server, "Stopped", "a paused guest is powered off at once")


def _drop_saved(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.discard_saved(server.uid)
    _event(deps, server, "Stopped", "the saved memory was discarded")


def _pause(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.pause(server.uid)
    _event(deps, server, "Paused", "vCPUs stopped, memory kept")


def _save(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.save(server.uid)
    _event(deps, server, "Suspended", "memory saved to disk (managed save)")


Step = Callable[[Deps, Server, Converged], None]

POWER_STEPS: dict[tuple[PowerState, State], Step] = {
    (PowerState.Running, State.paused): _unpause,
    (PowerState.Running, State.suspended): _resume,
    (PowerState.Running, State.shutoff): _start_or_restart,
    (PowerState.Running, State.crashed): _start_or_restart,
    (PowerState.Stopped, State.running): _stop,
    (PowerState.Stopped, State.paused): _stop_paused,
    (PowerState.Stopped, State.suspended): _drop_saved,
    (PowerState.Paused, State.running): _pause,
    (PowerState.Suspended, State.running): _save,
    (PowerState.Suspended, State.paused): _save,
}
"""(declared, observed) -> the action that moves the guest toward the declared state. A pair
missing here needs nothing, or is refused (pausing or suspending a stopped server)."""

BY_GUEST = (StopReason.shutdown, StopReason.crashed, StopReason.failed)


def stopped_by_itself(server: Server, guest: GuestInfo) -> bool:
    """Off for a reason of its own (powered off, crashed, QEMU died) — not because it was
    declared Stopped (a guest that obeys the power button also reports "shutdown")."""
    return (
        guest.stop_reason is not None
        and guest.stop_reason in BY_GUEST
        and server.spec.powerState is not PowerState.Stopped
    )


_PHASES = {
    State.running: Phase.ACTIVE,
    State.paused: Phase.PAUSED,
    State.suspended: Phase.SUSPENDED,
    State.shutoff: Phase.SHUTOFF,
    State.crashed: Phase.SHUTOFF,
    State.other: Phase.BUILD,
}


# ----------------------------------------------------------------------------- reporting

AGENT_CONDITIONS = ("Ready", "Converged", "Reconciling", "Stalled")
"""The Server's conditions its agent writes. Ready, Reconciling and Stalled follow kstatus
(what Flux and Argo CD judge health with): Ready is True when the server is what its spec
declares — running, stopped, paused, suspended, rescued — not only when it runs; Reconciling
(True while the agent works towards the spec) and Stalled (True when it refuses or cannot do
what is declared) are "abnormal-true": False when all is well."""

Said = tuple[ConditionStatus, str, str]
"""A condition's status, reason and message."""

DECLARED_STATES: dict[PowerState, tuple[State, ...]] = {
    PowerState.Running: (State.running,),
    PowerState.Stopped: (State.shutoff, State.crashed),
    PowerState.Paused: (State.paused,),
    PowerState.Suspended: (State.suspended,),
}


@dataclasses.dataclass(frozen=True)
class Health:
    """The Server's Ready, Reconciling and Stalled conditions as the agent sees them."""

    ready: Said
    reconciling: Said | None = None
    """(reason, message) of the work under way, or None."""
    stalled: Said | None = None

    def conditions(self) -> list[tuple[str, Said]]:
        calm = "AsDeclared" if self.ready[0] == "True" else "Waiting"
        idle: Said = ("False", "Stalled" if self.stalled else calm, "")
        return [
            ("Ready", self.ready),
            ("Reconciling", self.reconciling or idle),
            ("Stalled", self.stalled or ("False", calm, "")),
        ]


def _working(reason: str, message: str) -> Said:
    """A True abnormal-true condition (Reconciling, Stalled) with its reason and message."""
    return ("True", reason, message)


def health(server: Server, guest: GuestInfo | None, what: Report, host: str) -> Health:
    """Ready, Reconciling and Stalled for what the agent sees and did."""
    if what.error is not None:
        return Health(("False", *what.error), stalled=("True", *what.error))
    if guest is None:
        waiting = what.waiting or ("Spawning", f"defining the domain on {host}")
        return Health(("False", *waiting), reconciling=_working(*waiting))
    state = guest.state
    rescued = domain_xml.is_rescue(guest.xml)
    converged = what.converged
    if what.migrating is not None:
        return Health(("True", "Migrating", f"{what.migrating}; running on {host} until then"))
    if state is State.running and what.boot_failed is not None:
        failed = ("BootFailed", f"{what.boot_failed} (on {host})")
        return Health(("False", *failed), stalled=("True", *failed))
    is_now: Said = ("False", state.value, f"domain is {state.value.lower()} on {host}")
    if state is State.running:
        is_now = ("False", "Rescued" if rescued else "Running", f"running on {host}")
    if what.waiting is not None:
        return Health(("False", *what.waiting), reconciling=_working(*what.waiting))
    if converged is not None and converged.refused:
        return Health(is_now, stalled=("True", "ActionNotAllowed", converged.refused))
    backoff = converged.backoff if converged is not None else None
    if backoff is not None:
        said = (backoff.reason, f"{backoff.message} (on {host})")
        return Health(("False", *said), stalled=("True", *said))
    if stopped_by_itself(server, guest):
        assert guest.stop_reason is not None
        reason = guest.stop_reason.value
        policy = server.spec.restartPolicy
        off: Said = ("False", reason, f"the guest stopped by itself on {host}")
        if will_restart(policy, guest.stop_reason):
            restarting = f"restarting it (restart policy {policy})"
            return Health(off, reconciling=_working(reason, restarting))
        why = (
            f"the guest stopped by itself on {host} and its restart policy {policy} keeps it "
            f"off; set powerState Stopped, or start it again (a new rebootRequestedAt with "
            f"rebootType Hard)"
        )
        return Health(off, stalled=("True", reason, why))
    want_rescue = server.spec.rescue is not None
    busy = converged is not None and (converged.stopping or converged.rebooting)
    if (
        state in DECLARED_STATES[server.spec.powerState]
        and (rescued == want_rescue or state is not State.running)
        and not busy
    ):
        declared = "rescued" if want_rescue else server.spec.powerState.value.lower()
        return Health(("True", is_now[1], f"{is_now[2]}, as declared ({declared})"))
    doing = _convergence(what)
    if doing is not None and doing[0] == "False":
        return Health(is_now, reconciling=("True", doing[1], doing[2]))
    declared = "rescue" if want_rescue else f"powerState {server.spec.powerState}"
    return Health(is_now, reconciling=_working("Converging", f"{declared} declared; {is_now[2]}"))


def will_restart(policy: RestartPolicy, reason: StopReason) -> bool:
    """Whether a guest that stopped by itself for ``reason`` is started again."""
    return policy is RestartPolicy.Always or (
        policy is RestartPolicy.OnFailure and reason is not StopReason.shutdown
    )


def observed_status(
    deps: Deps, server: Server, guest: GuestInfo | None, what: Report
) -> ServerStatus:
    """The part of the status this agent owns, as it should read now."""
    old = server.status
    last = deps.written.get(server.uid)
    generation = server.metadata.generation
    host = deps.settings.host_name
    converged = what.converged
    status = ServerStatus()
    if what.error is not None:
        phase = Phase.ERROR
    elif guest is None:
        phase = Phase.BUILD
    else:
        phase = _PHASES[guest.state]
        if server.spec.powerState is PowerState.Running and _never_run(deps, server, guest):
            # On its way to its first boot. Declared Stopped (or Paused, Suspended: refused
            # for a guest that is off), a domain defined is a Server built: SHUTOFF.
            phase = Phase.BUILD
        if domain_xml.is_rescue(guest.xml) and guest.state is State.running:
            phase = Phase.RESCUE
        status.powerState = guest.state.value
        status.domainName = guest.name
        if what.migrating is not None:
            phase = Phase.MIGRATING
    status.phase = phase
    status.observedGeneration = generation
    conditions = [c for c in old.conditions if c.type in AGENT_CONDITIONS]
    for type_, value in health(server, guest, what, host).conditions():
        conditions = common.set_condition(conditions, type_, *value, generation)
    progress = _convergence(what)
    if progress is not None:
        conditions = common.set_condition(conditions, "Converged", *progress, generation)
    status.conditions = conditions
    launched = old.launchedAt or (last.launchedAt if last is not None else None)
    if launched is None and phase is Phase.ACTIVE:
        launched = common.now()
    if launched is not None:
        status.launchedAt = launched
    reboot_seen = (
        (converged.reboot_seen if converged else None)
        or old.observedRebootRequestedAt
        or (last.observedRebootRequestedAt if last is not None else None)
    )
    if reboot_seen is not None:
        status.observedRebootRequestedAt = reboot_seen
    rebuild_seen = (
        (converged.rebuild_seen if converged else None)
        or old.observedRebuildRequestedAt
        or (last.observedRebuildRequestedAt if last is not None else None)
    )
    if rebuild_seen is not None:
        status.observedRebuildRequestedAt = rebuild_seen
    if guest is not None:
        status.imageRef = domain_xml.image_of(guest.xml)
    rebuilt = deps.rebuilt.get(server.uid)
    for said in (old, last):
        if rebuilt is None and said is not None:
            rebuilt = said.diskRebuilt
    if rebuilt is not None and old.evacuatedFrom is not None:
        status.diskRebuilt = rebuilt  # in every write: a field left out would be removed
    restarts = max(old.restartCount, last.restartCount if last is not None else 0)
    status.restartCount = restarts + (converged.restarted if converged else 0)
    return status


def _convergence(what: Report) -> tuple[ConditionStatus, str, str] | None:
    """``Converged``: whether the declared state is reached, and if not, why."""
    converged = what.converged
    if what.waiting is not None:
        return ("False", *what.waiting)
    if converged is None:
        return None
    if converged.refused:
        return ("False", "ActionNotAllowed", converged.refused)
    if converged.rebooting:
        return ("False", "Rebooting", "waiting for the guest to power off")
    if converged.stopping:
        return ("False", "Stopping", converged.stopping)
    if converged.backoff is not None:
        return ("False", converged.backoff.reason, converged.backoff.message)
    return ("True", "AsDeclared", "")


def _failure(what: Report) -> tuple[str, str] | None:
    """What went wrong, as a reason and a message, if anything did."""
    if what.error is not None:
        return what.error
    if what.waiting is not None:
        return what.waiting
    converged = what.converged
    if converged is not None and converged.refused:
        return "ActionNotAllowed", converged.refused
    if converged is not None and converged.backoff is not None:
        return converged.backoff.reason, converged.backoff.message
    return None


def _reasons(status: ServerStatus) -> set[str]:
    return {c.reason for c in status.conditions if c.type in AGENT_CONDITIONS}


def report(deps: Deps, server: Server, guest: GuestInfo | None, what: Report = Report()) -> None:
    """Write the observed state to the Server's status, only when it changed; a failure whose
    reason the status did not say yet is also told in a (Warning) Event — once, not on every
    retry."""
    uid = server.uid
    old = server.status
    status = observed_status(deps, server, guest, what)
    last = deps.written.get(uid)
    if says_the_same(old, status) or (last is not None and says_the_same(last, status)):
        return
    before = _reasons(last if last is not None else old)
    # The host a Server is bound to takes its runtime fields over (from the controller at
    # binding, from the previous host after a move): force is meant here.
    deps.kube.apply_status(server_ref(server), status, force=True)
    deps.written[uid] = status
    ready = common.get_condition(status.conditions, "Ready")
    assert ready is not None
    failure = _failure(what)
    if failure is not None and failure[0] not in before:
        _event(deps, server, failure[0], failure[1], warn=True)
    elif ready.reason in {r.value for r in BY_GUEST} and ready.reason not in before:
        _event(
            deps,
            server,
            ready.reason,
            f"the guest stopped by itself; restart policy {server.spec.restartPolicy.value}",
            warn=ready.reason != StopReason.shutdown.value,
        )
    elif ready.reason == "BootFailed" and ready.reason not in before:
        _event(deps, server, "BootFailed", ready.message, warn=True)
    if status.phase is Phase.ACTIVE and old.phase is not Phase.ACTIVE:
        log.info("%s is ACTIVE on %s", server.full_name, deps.settings.host_name)


def says_the_same(old: ServerStatus, new: ServerStatus) -> bool:
    """Whether ``old`` already says everything ``new`` sets (condition times aside)."""
    for name in new.model_fields_set:
        value = getattr(new, name)
        if name == "conditions":
            if not all(c.same(common.get_condition(old.conditions, c.type)) for c in value):
                return False
        elif getattr(old, name) != value:
            return False
    return True


# ----------------------------------------------------------------------------- console

CONSOLE_REQUEST = f"{constants.PREFIX}/console-request"
CONSOLE_BYTES = 64 * 1024


def serve_console(deps: Deps, server: Server) -> None:
    """Answer a console request (Nova's get_console_output): the tail of the serial console
    goes into the ConfigMap ``<server>-console-<host>``, marked with the request it answers."""
    asked = server.metadata.annotations.get(CONSOLE_REQUEST)
    if not asked or deps.console_served.get(server.uid) == asked:
        return
    path = pathlib.Path(console_path(deps.settings, server.uid))
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - CONSOLE_BYTES))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        text = ""
    deps.kube.put_configmap(
        server.namespace or "",
        constants.console_configmap(server.name, deps.settings.host_name),
        {"console": text},
        annotations={CONSOLE_REQUEST: asked},
        # The admission policies let an agent write only console answers of its own node.
        labels={constants.NODE_LABEL: deps.settings.host_name},
        owner=server_ref(server),
    )
    deps.console_served[server.uid] = asked


def delete_server(deps: Deps, server: Server) -> None:
    """Destroy and undefine the domain, delete its disks and console, release the finalizer."""
    if constants.FINALIZER_DOMAIN not in server.metadata.finalizers:
        return
    uid = server.uid
    teardown(deps, uid)
    deps.kube.remove_finalizer(server_ref(server), constants.FINALIZER_DOMAIN)
    deps.forget(uid)
    log.info("deleted %s from %s", server.full_name, deps.settings.host_name)


def forget_domain(deps: Deps, uid: str) -> None:
    """Remove this host's domain of a Server that lives elsewhere now, keeping the disks."""
    deps.guests.destroy(uid, force=True)
    deps.guests.undefine(uid)
    pathlib.Path(console_path(deps.settings, uid)).unlink(missing_ok=True)


def teardown(deps: Deps, uid: str) -> None:
    """Remove every trace of the domain with this UUID from the host (safe to repeat)."""
    deps.guests.destroy(uid)
    deps.guests.undefine(uid)
    deps.storage.delete_volumes(volume_prefix(uid))
    pathlib.Path(console_path(deps.settings, uid)).unlink(missing_ok=True)
