"""Making one Server real on this host, level-triggered: compare what the Server asks for with
what libvirt has and close the gap. Safe to run any number of times and to kill at any moment:
the domain's UUID is the Server's UID, disks and cache entries are named after stable keys, and
the finalizer is in place before anything is created on the host."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

from kubenova_agent import images
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_agent.libvirt.guest import GuestInfo, Guests, State
from kubenova_agent.libvirt.storage import Backing, Storage
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, constants, kube
from kubenova_api.resources import Phase, PowerState

log = logging.getLogger(__name__)

GIB = 1 << 30


@dataclasses.dataclass
class Deps:
    """What reconciling needs: the settings and one handle per outside system."""

    settings: AgentSettings
    kube: kube.Kube
    guests: Guests
    storage: Storage
    images: images.ImageCache
    virt_type: domain_xml.VirtType
    written: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The status last written per Server UID: the informer's copy may lag behind it, and a
    write that changes nothing is a wasted API request."""


class Permanent(Exception):
    """The Server cannot run as specified; it goes to ERROR until its spec changes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Retry(Exception):
    """Not possible yet; try again after ``delay`` seconds."""

    def __init__(self, reason: str, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay = delay


def server_ref(body: dict[str, Any]) -> kube.ObjectRef:
    return kube.ObjectRef.of(body, "Server", constants.SERVERS)


def volume_prefix(uid: str) -> str:
    return f"{uid}-"


def console_path(settings: AgentSettings, uid: str) -> str:
    return os.path.join(settings.consoles_dir, f"{uid}.log")


def reconcile_server(deps: Deps, body: dict[str, Any]) -> float | None:
    """Bring the host in line with ``body``; returns seconds until it should be looked at again."""
    ref = server_ref(body)
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        delete_server(deps, body)
        return None
    status = body.get("status") or {}
    if status.get("nodeName") != deps.settings.host_name:
        return None  # rebound elsewhere meanwhile
    generation = meta.get("generation")
    ready = common.get_condition(status.get("conditions"), "Ready") or {}
    if (
        status.get("phase") == Phase.ERROR
        and status.get("observedGeneration") == generation
        and ready.get("reason") in PERMANENT_REASONS
    ):
        return None  # nothing new to try until the spec changes
    body = deps.kube.add_finalizer(ref, body, constants.FINALIZER_DOMAIN)
    try:
        guest = deps.guests.get(meta["uid"])
        if guest is None:
            spawn(deps, body)
            guest = deps.guests.get(meta["uid"])
            if guest is None:
                raise Retry("SpawnFailed", "domain vanished right after it was defined")
        guest = converge_power(deps, body, guest)
    except Permanent as exc:
        report(deps, body, None, error=(exc.reason, str(exc)))
        deps.kube.event(ref, exc.reason, str(exc), warning=True)
        return None
    except Retry as exc:
        report(deps, body, None, waiting=(exc.reason, str(exc)))
        return exc.delay
    report(deps, body, guest)
    return None


PERMANENT_REASONS = {
    "ImageChecksumMismatch",
    "ImageFormatInvalid",
    "FlavorDiskTooSmall",
    "ImageFetchFailed",
}


def spawn(deps: Deps, body: dict[str, Any]) -> None:
    """Fetch the image, create the disks, define the domain (not yet started)."""
    meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
    flavor = status.get("flavor")
    if not flavor:
        raise Retry("WaitingForFlavor", "the controller has not recorded the flavor yet", 2.0)
    image_ref = kube.ObjectRef("Image", constants.IMAGES, spec["imageRef"])
    image = deps.kube.get_or_none(image_ref)
    if image is None:
        raise Retry("ImageNotFound", f"Image {spec['imageRef']} does not exist", 10.0)
    source = image["spec"]["source"]
    uid = meta["uid"]
    try:
        boot, disk_source = _fetch(deps, source)
        root = _root_disk(deps, uid, flavor, disk_source)
    except images.ImageError as exc:
        if exc.transient:
            raise Retry(exc.reason, str(exc), 10.0) from exc
        raise Permanent(exc.reason, str(exc)) from exc
    except errors.HypervisorError as exc:
        raise Retry("StorageFailed", f"creating the disk failed: {exc}", 5.0) from exc
    pathlib.Path(deps.settings.consoles_dir).mkdir(parents=True, exist_ok=True)
    cfg = domain_xml.DomainConfig(
        owner=domain_xml.Owner(meta["namespace"], meta["name"], uid),
        virt_type=deps.virt_type,
        vcpus=int(flavor["vcpus"]),
        memory_mib=int(flavor["memoryMiB"]),
        disks=(root,),
        console_log=console_path(deps.settings, uid),
        boot=boot,
        flavor_name=spec["flavorRef"],
        image_name=spec["imageRef"],
        arch=str(image["spec"].get("architecture", "x86_64")),
    )
    try:
        deps.guests.define(domain_xml.build_domain_xml(cfg))
    except errors.HypervisorError as exc:
        if exc.transient:
            raise Retry("DefineFailed", f"defining the domain failed: {exc}") from exc
        raise Permanent("DefineFailed", f"libvirt refused the domain: {exc}") from exc
    log.info("defined %s for %s/%s", cfg.name, meta["namespace"], meta["name"])


def _fetch(
    deps: Deps, source: dict[str, Any]
) -> tuple[domain_xml.DirectKernelBoot | None, tuple[pathlib.Path, str] | None]:
    if "uec" in source:
        uec = source["uec"]
        kernel = deps.images.ensure(uec["kernel"]["url"], uec["kernel"]["sha256"])
        ramdisk = deps.images.ensure(uec["ramdisk"]["url"], uec["ramdisk"]["sha256"])
        boot = domain_xml.DirectKernelBoot(
            str(kernel), str(ramdisk), uec.get("cmdline", "console=ttyS0")
        )
        disk = uec.get("disk")
    else:
        boot = None
        disk = source["disk"]
    if not disk:
        return boot, None
    path = deps.images.ensure(disk["url"], disk["sha256"])
    fmt = disk.get("format", "qcow2")
    if fmt == "qcow2" and images.has_backing_file(path):
        raise images.ImageError(
            "qcow2 images with a backing file are refused",
            reason="ImageFormatInvalid",
            transient=False,
        )
    return boot, (path, fmt)


def _root_disk(
    deps: Deps, uid: str, flavor: dict[str, Any], disk: tuple[pathlib.Path, str] | None
) -> domain_xml.Disk:
    flavor_bytes = int(flavor.get("diskGiB", 0)) * GIB
    if disk is None:
        capacity = flavor_bytes or GIB
        backing = None
    else:
        path, fmt = disk
        image_bytes = images.virtual_size(path, fmt)
        if flavor_bytes and flavor_bytes < image_bytes:
            raise images.ImageError(
                f"the flavor's {flavor['diskGiB']} GiB disk is smaller than the image's "
                f"{image_bytes / GIB:.1f} GiB",
                reason="FlavorDiskTooSmall",
                transient=False,
            )
        capacity = max(flavor_bytes, image_bytes)
        backing = Backing(str(path), fmt)
    path_str = deps.storage.ensure_volume(f"{volume_prefix(uid)}root.qcow2", capacity, backing)
    return domain_xml.Disk(path=path_str, format="qcow2", target="vda")


def converge_power(deps: Deps, body: dict[str, Any], guest: GuestInfo) -> GuestInfo:
    """Move the guest toward the declared power state (Running or Stopped here)."""
    want = body["spec"].get("powerState", PowerState.Running)
    uid = body["metadata"]["uid"]
    try:
        if want == PowerState.Running and guest.state in (State.shutoff, State.crashed):
            deps.guests.start(uid)
            deps.kube.event(
                server_ref(body),
                "Started",
                f"domain {guest.name} started on {deps.settings.host_name}",
            )
        elif want == PowerState.Stopped and guest.state in (State.running, State.paused):
            deps.guests.destroy(uid)
            deps.kube.event(server_ref(body), "Stopped", f"domain {guest.name} powered off")
    except errors.HypervisorError as exc:
        raise Retry("PowerActionFailed", f"changing power state failed: {exc}") from exc
    return deps.guests.get(uid) or guest


_PHASES = {
    State.running: Phase.ACTIVE,
    State.paused: Phase.PAUSED,
    State.suspended: Phase.SUSPENDED,
    State.shutoff: Phase.SHUTOFF,
    State.crashed: Phase.SHUTOFF,
    State.other: Phase.BUILD,
}


def report(
    deps: Deps,
    body: dict[str, Any],
    guest: GuestInfo | None,
    *,
    error: tuple[str, str] | None = None,
    waiting: tuple[str, str] | None = None,
) -> None:
    """Write the observed state to the Server's status, only when it changed."""
    meta = body["metadata"]
    old = body.get("status") or {}
    generation = meta.get("generation")
    host = deps.settings.host_name
    status: dict[str, Any] = {}
    cond: tuple[common.ConditionStatus, str, str]
    if error is not None:
        phase = Phase.ERROR
        cond = ("False", error[0], error[1])
    elif waiting is not None or guest is None:
        phase = Phase.BUILD
        reason, message = waiting or ("Spawning", "")
        cond = ("False", reason, message)
    else:
        phase = _PHASES[guest.state]
        status["powerState"] = guest.state.value
        status["domainName"] = guest.name
        if guest.state is State.running:
            cond = ("True", "Running", f"running on {host}")
        else:
            cond = ("False", guest.state.value, f"domain is {guest.state.value.lower()} on {host}")
    status["phase"] = phase.value
    status["observedGeneration"] = generation
    old_ready = common.get_condition(old.get("conditions"), "Ready")
    conditions = common.set_condition(
        [old_ready] if old_ready else [], "Ready", cond[0], cond[1], cond[2], generation
    )
    status["conditions"] = conditions
    uid = meta["uid"]
    launched = old.get("launchedAt") or deps.written.get(uid, {}).get("launchedAt")
    if launched is None and phase is Phase.ACTIVE:
        launched = common.now().isoformat().replace("+00:00", "Z")
    if launched is not None:
        status["launchedAt"] = launched
    if _unchanged(old, status) or _unchanged(deps.written.get(uid, {}), status):
        return
    deps.kube.apply_status(server_ref(body), status)
    deps.written[uid] = status
    if phase is Phase.ACTIVE and old.get("phase") != Phase.ACTIVE:
        log.info("%s/%s is ACTIVE on %s", meta["namespace"], meta["name"], host)


def _unchanged(old: dict[str, Any], new: dict[str, Any]) -> bool:
    for key, value in new.items():
        if key == "conditions":
            old_c = common.get_condition(old.get("conditions"), "Ready") or {}
            new_c = value[0]
            if any(old_c.get(k) != new_c.get(k) for k in ("status", "reason", "message")):
                return False
            if old_c.get("observedGeneration") != new_c.get("observedGeneration"):
                return False
        elif old.get(key) != value:
            return False
    return True


def delete_server(deps: Deps, body: dict[str, Any]) -> None:
    """Destroy and undefine the domain, delete its disks and console, release the finalizer."""
    meta = body["metadata"]
    finalizers = meta.get("finalizers") or []
    if constants.FINALIZER_DOMAIN not in finalizers:
        return
    uid = meta["uid"]
    teardown(deps, uid)
    ref = server_ref(body)
    deps.kube.remove_finalizer(ref, constants.FINALIZER_DOMAIN)
    deps.written.pop(uid, None)
    log.info("deleted %s/%s from %s", meta["namespace"], meta["name"], deps.settings.host_name)


def teardown(deps: Deps, uid: str) -> None:
    """Remove every trace of the domain with this UUID from the host (safe to repeat)."""
    deps.guests.destroy(uid)
    deps.guests.undefine(uid)
    deps.storage.delete_volumes(volume_prefix(uid))
    pathlib.Path(console_path(deps.settings, uid)).unlink(missing_ok=True)
