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

from kubenova_agent import bootwatch, configdrive, driver, images
from kubenova_agent.driver import GuestInfo, State, StopReason
from kubenova_agent.libvirt import domain_xml, errors
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
    def ensure(self, url: str, sha256: str) -> pathlib.Path: ...


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
    hold: Callable[[str], str | None] | None = None
    """Why a guest must be left alone (it is migrating away), by Server UID."""
    moved_away: Callable[[str], bool] | None = None
    """Whether a guest has just migrated away (the target deletes it when asked)."""
    guest_cpu: Callable[[Server], str | None] | None = None
    """The ``<cpu>`` XML a new guest of this Server gets (None: the hypervisor's default)."""
    boots: bootwatch.BootWatch | None = None
    """Boots this agent started, watched for the firmware finding nothing to boot."""


class Permanent(Exception):
    """The Server cannot run as specified; it goes to ERROR until its spec changes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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


@dataclasses.dataclass(frozen=True)
class Report:
    """What the status should say about the Server besides the guest itself."""

    error: tuple[str, str] | None = None
    waiting: tuple[str, str] | None = None
    converged: Converged | None = None
    migrating: str | None = None
    boot_failed: str | None = None


def reconcile_server(deps: Deps, server: Server) -> float | None:
    """Bring the host in line with ``server``; returns seconds until it should be looked at
    again (None: only when something changes)."""
    meta = server.metadata
    if meta.deleting:
        if deps.moved_away is not None and deps.moved_away(meta.uid):
            return None  # rebound to the target in a moment; its agent tears it down there
        delete_server(deps, server)
        return None
    status = server.status
    if status.nodeName != deps.settings.host_name:
        return None  # rebound elsewhere meanwhile
    held = deps.hold(meta.uid) if deps.hold is not None else None
    if held is not None:
        guest = deps.guests.get(meta.uid)
        if guest is not None and guest.alive:
            report(deps, server, guest, Report(migrating=held))
        return None  # the migration owns the guest until it ends
    ready = common.get_condition(status.conditions, "Ready")
    if (
        status.phase is Phase.ERROR
        and status.observedGeneration == meta.generation
        and ready is not None
        and ready.reason in PERMANENT_REASONS
    ):
        return None  # nothing new to try until the spec changes
    server = deps.kube.add_finalizer(server, constants.FINALIZER_DOMAIN)
    try:
        guest = deps.guests.get(meta.uid)
        if guest is None:
            deps.guests.define(domain_xml.build_domain_xml(domain_config(deps, server)))
            log.info("defined the domain of %s", server.full_name)
            guest = deps.guests.get(meta.uid)
            if guest is None:
                raise RetryLater("SpawnFailed", "domain vanished right after it was defined")
        before = guest.state
        converged = converge(deps, server, guest)
        delay, failed = _watch_boot(deps, server, before, converged)
    except Permanent as exc:
        report(deps, server, None, Report(error=(exc.reason, str(exc))))
        deps.kube.event(server_ref(server), exc.reason, str(exc), warning=True)
        return None
    except RetryLater as exc:
        report(deps, server, None, Report(waiting=(exc.reason, str(exc))))
        return exc.delay
    except errors.HypervisorError as exc:
        raise RetryLater("LibvirtError", str(exc)) from exc
    report(deps, server, converged.guest, Report(converged=converged, boot_failed=failed))
    serve_console(deps, server)
    return delay


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


PERMANENT_REASONS = {
    "ImageChecksumMismatch",
    "ImageFormatInvalid",
    "FlavorDiskTooSmall",
    "ImageFetchFailed",
}


# ----------------------------------------------------------------------------- building


def _image(deps: Deps, name: str) -> Image:
    image = deps.kube.get(Image, name)
    if image is None:
        raise RetryLater("ImageNotFound", f"Image {name} does not exist", 10.0)
    return image


def domain_config(deps: Deps, server: Server) -> domain_xml.DomainConfig:
    """The domain the Server should have now: fetches images and creates disks and the config
    drive as needed (each step idempotent). In rescue, the rescue image boots with the server's
    own disk attached second."""
    spec, flavor = server.spec, server.status.flavor
    if flavor is None:
        raise RetryLater("WaitingForFlavor", "the controller has not recorded the flavor yet", 2.0)
    uid = server.uid
    image = _image(deps, spec.imageRef)
    # The image that boots decides the hardware (the rescue image's, in rescue).
    props = image.spec.properties
    bus = props.disk_bus.value
    try:
        boot, disk_source = _fetch(deps, server, image.spec.source)
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
            rescue_image = _image(deps, spec.rescue.imageRef or spec.imageRef)
            props = rescue_image.spec.properties
            bus = props.disk_bus.value
            boot, rescue_source = _fetch(deps, server, rescue_image.spec.source)
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
            raise RetryLater(exc.reason, str(exc), 10.0) from exc
        raise Permanent(exc.reason, str(exc)) from exc
    except errors.HypervisorError as exc:
        raise RetryLater("StorageFailed", f"creating the disk failed: {exc}", 5.0) from exc
    drive = deps.storage.ensure_file_volume(
        f"{volume_prefix(uid)}config.iso",
        lambda path: configdrive.write(path, configdrive.metadata_of(server), spec),
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
        arch=image.spec.architecture.value,
        rescue=spec.rescue is not None,
        cpu_xml=deps.guest_cpu(server) if deps.guest_cpu is not None else None,
        disk_cache=deps.settings.disk_cache,
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


def _cached(deps: Deps, server: Server, url: str, sha256: str) -> pathlib.Path:
    """The image file from the host's cache; a fresh download is told in an Event."""
    fresh = not deps.images.path_of(sha256).exists()
    started = time.monotonic()
    path = deps.images.ensure(url, sha256)
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
        kernel = _cached(deps, server, uec.kernel.url, uec.kernel.sha256)
        ramdisk = _cached(deps, server, uec.ramdisk.url, uec.ramdisk.sha256)
        boot = domain_xml.DirectKernelBoot(str(kernel), str(ramdisk), uec.cmdline)
        disk = uec.disk
    if disk is None:
        return boot, None
    path = _cached(deps, server, disk.url, disk.sha256)
    if disk.format is DiskFormat.qcow2 and images.has_backing_file(path):
        raise images.ImageError(
            "qcow2 images with a backing file are refused",
            reason="ImageFormatInvalid",
            transient=False,
        )
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
            deps.guests.start(server.uid)
            out.guest = _refresh(deps, server.uid)
        if spec.powerState is not PowerState.Running:
            out.refused = "a rescued server stays running; unrescue it first"
        return out
    _reboot_if_asked(deps, server, out)
    _converge_power(deps, server, out)
    return out


def _refresh(deps: Deps, uid: str) -> GuestInfo:
    guest = deps.guests.get(uid)
    if guest is None:
        raise RetryLater("DomainVanished", "the domain disappeared while being changed", 1.0)
    return guest


def switch_rescue(deps: Deps, server: Server, to_rescue: bool) -> GuestInfo:
    """Rescue: stop the guest and boot the rescue image with the guest's disk as the second
    disk. Unrescue: stop the rescue guest, drop its disk and boot the original again."""
    uid = server.uid
    deps.guests.destroy(uid)
    deps.guests.discard_saved(uid)
    deps.guests.define(domain_xml.build_domain_xml(domain_config(deps, server)))
    if not to_rescue:
        deps.storage.delete_volumes(f"{volume_prefix(uid)}rescue")
    deps.guests.start(uid)
    if to_rescue:
        _event(deps, server, "Rescued", "booted the rescue image; the server's disk is /dev/vdb")
    else:
        _event(deps, server, "Unrescued", "booted the server's own disk again")
    return _refresh(deps, uid)


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
    deps.guests.define(domain_xml.build_domain_xml(domain_config(deps, server)))
    out.guest = _refresh(deps, uid)
    _event(deps, server, "Rebuilt", f"rebuilt from Image {spec.imageRef}")


def _reboot_if_asked(deps: Deps, server: Server, out: Converged) -> None:
    spec, uid = server.spec, server.uid
    asked = spec.rebootRequestedAt
    last = deps.written.get(uid)
    seen = server.status.observedRebootRequestedAt or (
        last.observedRebootRequestedAt if last is not None else None
    )
    if asked is None or asked == seen:
        return
    out.reboot_seen = asked
    hard = spec.rebootType is RebootType.Hard
    state = out.guest.state
    if state is State.running:
        how = "hard"
        if not hard:
            timeout = float(spec.shutdownTimeoutSeconds)
            how = "soft" if deps.guests.shutdown(uid, timeout) else "soft, then hard: no answer"
        deps.guests.destroy(uid, force=True)
        deps.guests.start(uid)
        _event(deps, server, "Rebooted", f"rebooted ({how})")
    elif hard and spec.powerState is PowerState.Running:
        deps.guests.discard_saved(uid)
        if state is State.paused:
            deps.guests.unpause(uid)
        else:
            deps.guests.start(uid)
        _event(deps, server, "Rebooted", f"hard reboot of a {state.value.lower()} server")
    else:
        _event(
            deps,
            server,
            "RebootRefused",
            f"a soft reboot needs a running server; this one is {state.value.lower()}",
            warn=True,
        )
    out.guest = _refresh(deps, uid)


def _converge_power(deps: Deps, server: Server, out: Converged) -> None:
    """One step toward the declared power state, by the table of what each state allows."""
    want = server.spec.powerState
    state = out.guest.state
    step = POWER_STEPS.get((want, state))
    if step is not None:
        step(deps, server, out)
    elif want is PowerState.Paused and state is not State.paused:
        out.refused = f"cannot pause a server that is {_PHASES[state].value}"
    elif want is PowerState.Suspended and state is not State.suspended:
        out.refused = f"cannot suspend a server that is {_PHASES[state].value}"
    out.guest = _refresh(deps, server.uid)


def _unpause(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.unpause(server.uid)
    _event(deps, server, "Unpaused", "vCPUs running again")


def _resume(deps: Deps, server: Server, _out: Converged) -> None:
    deps.guests.start(server.uid)
    _event(deps, server, "Resumed", "memory restored from the managed-save image")


def _start_or_restart(deps: Deps, server: Server, out: Converged) -> None:
    """A stopped guest is started; one that stopped by itself (the spec unchanged since) is
    started again only as its restart policy says."""
    guest, status = out.guest, server.status
    unchanged_spec = status.observedGeneration == server.metadata.generation
    if guest.stop_reason is None or guest.stop_reason not in BY_GUEST or not unchanged_spec:
        deps.guests.start(server.uid)
        _event(deps, server, "Started", f"domain {guest.name} started on {deps.settings.host_name}")
        return
    policy = server.spec.restartPolicy
    log.info(
        "%s: the guest stopped by itself (%s); restart policy %s",
        server.full_name,
        guest.stop_reason.value,
        policy.value,
    )
    restart = policy is RestartPolicy.Always or (
        policy is RestartPolicy.OnFailure and guest.stop_reason is not StopReason.shutdown
    )
    ready = common.get_condition(status.conditions, "Ready")
    if ready is None or ready.reason != guest.stop_reason.value:
        report(deps, server, guest)  # say that it stopped before starting it again
    if not restart:
        return
    deps.guests.start(server.uid)
    out.restarted = 1
    _event(deps, server, "Restarted", f"started again (restart policy {policy.value})")


def _stop(deps: Deps, server: Server, _out: Converged) -> None:
    timeout = float(server.spec.shutdownTimeoutSeconds)
    clean = deps.guests.shutdown(server.uid, timeout)
    deps.guests.destroy(server.uid)
    _event(
        deps,
        server,
        "Stopped",
        "the guest shut down" if clean else f"forced off after {timeout:.0f}s",
    )


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

AGENT_CONDITIONS = ("Ready", "Converged")


def observed_status(
    deps: Deps, server: Server, guest: GuestInfo | None, what: Report
) -> ServerStatus:
    """The part of the status this agent owns, as it should read now."""
    old = server.status
    last = deps.written.get(server.uid)
    generation = server.metadata.generation
    host = deps.settings.host_name
    status = ServerStatus()
    cond: tuple[ConditionStatus, str, str]
    if what.error is not None:
        phase = Phase.ERROR
        cond = ("False", *what.error)
    elif what.waiting is not None or guest is None:
        phase = Phase.BUILD
        cond = ("False", *(what.waiting or ("Spawning", "")))
    else:
        phase = _PHASES[guest.state]
        rescued = domain_xml.is_rescue(guest.xml)
        if rescued and guest.state is State.running:
            phase = Phase.RESCUE
        status.powerState = guest.state.value
        status.domainName = guest.name
        if what.migrating is not None:
            phase = Phase.MIGRATING
            cond = ("True", "Migrating", f"{what.migrating}; running on {host} until then")
        elif guest.state is State.running and what.boot_failed is not None:
            cond = ("False", "BootFailed", f"{what.boot_failed} (on {host})")
        elif guest.state is State.running:
            cond = ("True", "Rescued" if rescued else "Running", f"running on {host}")
        elif stopped_by_itself(server, guest):
            assert guest.stop_reason is not None
            cond = ("False", guest.stop_reason.value, f"the guest stopped by itself on {host}")
        else:
            cond = ("False", guest.state.value, f"domain is {guest.state.value.lower()} on {host}")
    status.phase = phase
    status.observedGeneration = generation
    conditions = [c for c in old.conditions if c.type in AGENT_CONDITIONS]
    conditions = common.set_condition(conditions, "Ready", cond[0], cond[1], cond[2], generation)
    converged = what.converged
    if converged is not None:
        if converged.refused:
            conditions = common.set_condition(
                conditions, "Converged", "False", "ActionNotAllowed", converged.refused, generation
            )
        else:
            conditions = common.set_condition(
                conditions, "Converged", "True", "AsDeclared", "", generation
            )
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
    restarts = max(old.restartCount, last.restartCount if last is not None else 0)
    status.restartCount = restarts + (converged.restarted if converged else 0)
    return status


def report(deps: Deps, server: Server, guest: GuestInfo | None, what: Report = Report()) -> None:
    """Write the observed state to the Server's status, only when it changed."""
    uid = server.uid
    old = server.status
    status = observed_status(deps, server, guest, what)
    last = deps.written.get(uid)
    if says_the_same(old, status) or (last is not None and says_the_same(last, status)):
        return
    # The host a Server is bound to takes its runtime fields over (from the controller at
    # binding, from the previous host after a move): force is meant here.
    deps.kube.apply_status(server_ref(server), status, force=True)
    deps.written[uid] = status
    ready = common.get_condition(status.conditions, "Ready")
    old_ready = common.get_condition(old.conditions, "Ready")
    assert ready is not None
    by_guest = {r.value for r in BY_GUEST}
    if ready.reason in by_guest and (old_ready is None or old_ready.reason != ready.reason):
        _event(
            deps,
            server,
            ready.reason,
            f"the guest stopped by itself; restart policy {server.spec.restartPolicy.value}",
            warn=ready.reason != StopReason.shutdown.value,
        )
    if ready.reason == "BootFailed" and (old_ready is None or old_ready.reason != "BootFailed"):
        _event(deps, server, "BootFailed", ready.message, warn=True)
    converged = what.converged
    if converged is not None and converged.refused:
        new = common.get_condition(status.conditions, "Converged")
        assert new is not None
        if not new.same(common.get_condition(old.conditions, "Converged")):
            _event(deps, server, "ActionNotAllowed", converged.refused, warn=True)
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
    goes into the ConfigMap ``<server>-console``, marked with the request it answers."""
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
        f"{server.name}-console",
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
    if deps.boots is not None:
        deps.boots.forget(uid)
    deps.kube.remove_finalizer(server_ref(server), constants.FINALIZER_DOMAIN)
    deps.written.pop(uid, None)
    deps.console_served.pop(uid, None)
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
