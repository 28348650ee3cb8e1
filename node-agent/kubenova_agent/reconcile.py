"""Making one Server real on this host, level-triggered: compare what the Server asks for with
what libvirt has and close the gap. Safe to run any number of times and to kill at any moment:
the domain's UUID is the Server's UID, disks and cache entries are named after stable keys, and
the finalizer is in place before anything is created on the host."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from kubenova_agent import configdrive, images
from kubenova_agent.libvirt import domain_xml, errors
from kubenova_agent.libvirt.guest import GuestInfo, Guests, State, StopReason
from kubenova_agent.libvirt.storage import Backing, Storage
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, constants, kube
from kubenova_api.resources import Phase, PowerState, RebootType, RestartPolicy

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
    console_served: dict[str, str] = dataclasses.field(default_factory=dict)
    hold: Callable[[str], str | None] | None = None
    """Why a guest must be left alone (it is migrating away), by Server UID."""
    moved_away: Callable[[str], bool] | None = None
    """Whether a guest has just migrated away (the target deletes it when asked)."""
    guest_cpu: Callable[[dict[str, Any]], str | None] | None = None
    """The ``<cpu>`` XML a new guest of this Server gets (None: the hypervisor's default)."""


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


@dataclasses.dataclass
class Converged:
    """What converging did, for the status report."""

    guest: GuestInfo
    refused: str | None = None
    """Why the declared state cannot be reached from the current one (nothing was tried)."""
    reboot_seen: str | None = None
    restarted: int = 0


def reconcile_server(deps: Deps, body: dict[str, Any]) -> float | None:
    """Bring the host in line with ``body``; returns seconds until it should be looked at again."""
    ref = server_ref(body)
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        if deps.moved_away is not None and deps.moved_away(meta["uid"]):
            return None  # rebound to the target in a moment; its agent tears it down there
        delete_server(deps, body)
        return None
    status = body.get("status") or {}
    if status.get("nodeName") != deps.settings.host_name:
        return None  # rebound elsewhere meanwhile
    held = deps.hold(meta["uid"]) if deps.hold is not None else None
    if held is not None:
        guest = deps.guests.get(meta["uid"])
        if guest is not None and guest.state in (State.running, State.paused):
            report(deps, body, guest, migrating=held)
        return None  # the migration owns the guest until it ends
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
            deps.guests.define(domain_xml.build_domain_xml(domain_config(deps, body)))
            log.info("defined the domain of %s/%s", meta["namespace"], meta["name"])
            guest = deps.guests.get(meta["uid"])
            if guest is None:
                raise Retry("SpawnFailed", "domain vanished right after it was defined")
        converged = converge(deps, body, guest)
    except Permanent as exc:
        report(deps, body, None, error=(exc.reason, str(exc)))
        deps.kube.event(ref, exc.reason, str(exc), warning=True)
        return None
    except Retry as exc:
        report(deps, body, None, waiting=(exc.reason, str(exc)))
        return exc.delay
    except errors.HypervisorError as exc:
        raise Retry("LibvirtError", str(exc)) from exc
    report(deps, body, converged.guest, converged=converged)
    serve_console(deps, body)
    return None


PERMANENT_REASONS = {
    "ImageChecksumMismatch",
    "ImageFormatInvalid",
    "FlavorDiskTooSmall",
    "ImageFetchFailed",
    *images.PERMANENT_REASONS,
}


# ----------------------------------------------------------------------------- building


def _image(deps: Deps, name: str) -> dict[str, Any]:
    image = deps.kube.get_or_none(kube.ObjectRef("Image", constants.IMAGES, name))
    if image is None:
        raise Retry("ImageNotFound", f"Image {name} does not exist", 10.0)
    return image


def domain_config(deps: Deps, body: dict[str, Any]) -> domain_xml.DomainConfig:
    """The domain the Server should have now: fetches images and creates disks and the config
    drive as needed (each step idempotent). In rescue, the rescue image boots with the server's
    own disk attached second."""
    meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
    flavor = status.get("flavor")
    if not flavor:
        raise Retry("WaitingForFlavor", "the controller has not recorded the flavor yet", 2.0)
    uid = meta["uid"]
    image = _image(deps, spec["imageRef"])
    rescue = spec.get("rescue")
    try:
        boot, disk_source = _fetch(deps, body, image["spec"]["source"])
        root = _root_disk(deps, f"{volume_prefix(uid)}root.qcow2", flavor, disk_source, "vda")
        disks = [root]
        if rescue is not None:
            rescue_image = _image(deps, rescue.get("imageRef") or spec["imageRef"])
            boot, rescue_source = _fetch(deps, body, rescue_image["spec"]["source"])
            rescue_root = _root_disk(
                deps, f"{volume_prefix(uid)}rescue.qcow2", flavor, rescue_source, "vda"
            )
            disks = [rescue_root, dataclasses.replace(root, target="vdb")]
    except images.ImageError as exc:
        if exc.transient:
            raise Retry(exc.reason, str(exc), exc.retry_after) from exc
        raise Permanent(exc.reason, str(exc)) from exc
    except errors.HypervisorError as exc:
        raise Retry("StorageFailed", f"creating the disk failed: {exc}", 5.0) from exc
    drive = deps.storage.ensure_file_volume(
        f"{volume_prefix(uid)}config.iso",
        lambda path: configdrive.write(path, configdrive.metadata_of(body), spec),
    )
    disks.append(
        domain_xml.Disk(
            drive, format="raw", target=f"vd{chr(ord('a') + len(disks))}", readonly=True
        )
    )
    pathlib.Path(deps.settings.consoles_dir).mkdir(parents=True, exist_ok=True)
    return domain_xml.DomainConfig(
        owner=domain_xml.Owner(meta["namespace"], meta["name"], uid),
        virt_type=deps.virt_type,
        vcpus=int(flavor["vcpus"]),
        memory_mib=int(flavor["memoryMiB"]),
        disks=tuple(disks),
        console_log=console_path(deps.settings, uid),
        boot=boot,
        flavor_name=spec["flavorRef"],
        image_name=spec["imageRef"],
        arch=str(image["spec"].get("architecture", "x86_64")),
        rescue=rescue is not None,
        cpu_xml=deps.guest_cpu(body) if deps.guest_cpu is not None else None,
        disk_cache=deps.settings.disk_cache,
    )


def _cached(deps: Deps, body: dict[str, Any], url: str, sha256: str, kind: str) -> pathlib.Path:
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
            body,
            "ImageFetched",
            f"fetched {url} ({size:.1f} MiB) in {took:.1f}s to {deps.settings.host_name}; "
            "sha256 verified",
        )
    return path


def _fetch(
    deps: Deps, body: dict[str, Any], source: dict[str, Any]
) -> tuple[domain_xml.DirectKernelBoot | None, tuple[pathlib.Path, str] | None]:
    if "uec" in source:
        uec = source["uec"]
        kernel = _cached(deps, body, uec["kernel"]["url"], uec["kernel"]["sha256"], "kernel")
        ramdisk = _cached(deps, body, uec["ramdisk"]["url"], uec["ramdisk"]["sha256"], "ramdisk")
        boot = domain_xml.DirectKernelBoot(
            str(kernel), str(ramdisk), uec.get("cmdline", "console=ttyS0")
        )
        disk = uec.get("disk")
    else:
        boot = None
        disk = source["disk"]
    if not disk:
        return boot, None
    fmt = disk.get("format", "qcow2")
    path = _cached(deps, body, disk["url"], disk["sha256"], fmt)
    return boot, (path, fmt)


def _root_disk(
    deps: Deps,
    volume: str,
    flavor: dict[str, Any],
    disk: tuple[pathlib.Path, str] | None,
    target: str,
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
    path_str = deps.storage.ensure_volume(volume, capacity, backing)
    if deps.storage.grow_volume(volume, capacity):  # resized to a bigger flavor
        log.info("grew %s to %.1f GiB", volume, capacity / GIB)
    return domain_xml.Disk(path=path_str, format="qcow2", target=target)


# ----------------------------------------------------------------------------- converging


def _event(deps: Deps, body: dict[str, Any], reason: str, message: str, warn: bool = False) -> None:
    deps.kube.event(server_ref(body), reason, message, warning=warn)


def converge(deps: Deps, body: dict[str, Any], guest: GuestInfo) -> Converged:
    """Move the guest toward what the spec declares: rescue, a reboot request, power state."""
    spec, meta = body["spec"], body["metadata"]
    uid = meta["uid"]
    out = Converged(guest)
    want_rescue = spec.get("rescue") is not None
    if want_rescue != domain_xml.is_rescue(guest.xml):
        out.guest = switch_rescue(deps, body, want_rescue)
    if want_rescue:
        if out.guest.state is not State.running:
            deps.guests.discard_saved(uid)
            deps.guests.start(uid)
            out.guest = _refresh(deps, uid)
        if spec.get("powerState", PowerState.Running) != PowerState.Running:
            out.refused = "a rescued server stays running; unrescue it first"
        return out
    _reboot_if_asked(deps, body, out)
    _converge_power(deps, body, out)
    return out


def _refresh(deps: Deps, uid: str) -> GuestInfo:
    guest = deps.guests.get(uid)
    if guest is None:
        raise Retry("DomainVanished", "the domain disappeared while being changed", 1.0)
    return guest


def switch_rescue(deps: Deps, body: dict[str, Any], to_rescue: bool) -> GuestInfo:
    """Rescue: stop the guest and boot the rescue image with the guest's disk as the second
    disk. Unrescue: stop the rescue guest, drop its disk and boot the original again."""
    uid = body["metadata"]["uid"]
    deps.guests.destroy(uid)
    deps.guests.discard_saved(uid)
    deps.guests.define(domain_xml.build_domain_xml(domain_config(deps, body)))
    if not to_rescue:
        deps.storage.delete_volumes(f"{volume_prefix(uid)}rescue")
    deps.guests.start(uid)
    if to_rescue:
        _event(deps, body, "Rescued", "booted the rescue image; the server's disk is /dev/vdb")
    else:
        _event(deps, body, "Unrescued", "booted the server's own disk again")
    return _refresh(deps, uid)


def _reboot_if_asked(deps: Deps, body: dict[str, Any], out: Converged) -> None:
    spec, meta = body["spec"], body["metadata"]
    uid = meta["uid"]
    asked = spec.get("rebootRequestedAt")
    seen = (body.get("status") or {}).get("observedRebootRequestedAt") or deps.written.get(
        uid, {}
    ).get("observedRebootRequestedAt")
    if not asked or asked == seen:
        return
    out.reboot_seen = asked
    hard = spec.get("rebootType", RebootType.Soft) == RebootType.Hard
    state = out.guest.state
    if state is State.running:
        how = "hard"
        if not hard:
            timeout = float(spec.get("shutdownTimeoutSeconds", 60))
            how = "soft" if deps.guests.shutdown(uid, timeout) else "soft, then hard: no answer"
        deps.guests.destroy(uid, force=True)
        deps.guests.start(uid)
        _event(deps, body, "Rebooted", f"rebooted ({how})")
    elif hard and spec.get("powerState", PowerState.Running) == PowerState.Running:
        deps.guests.discard_saved(uid)
        deps.guests.unpause(uid) if state is State.paused else deps.guests.start(uid)
        _event(deps, body, "Rebooted", f"hard reboot of a {state.value.lower()} server")
    else:
        _event(
            deps,
            body,
            "RebootRefused",
            f"a soft reboot needs a running server; this one is {state.value.lower()}",
            warn=True,
        )
    out.guest = _refresh(deps, uid)


def _converge_power(deps: Deps, body: dict[str, Any], out: Converged) -> None:
    spec, meta, status = body["spec"], body["metadata"], body.get("status") or {}
    uid = meta["uid"]
    want = spec.get("powerState", PowerState.Running)
    guest = out.guest
    state = guest.state
    if want == PowerState.Running:
        if state is State.paused:
            deps.guests.unpause(uid)
            _event(deps, body, "Unpaused", "vCPUs running again")
        elif state is State.suspended:
            deps.guests.start(uid)
            _event(deps, body, "Resumed", "memory restored from the managed-save image")
        elif state in (State.shutoff, State.crashed):
            by_guest = guest.stop_reason in BY_GUEST
            unchanged_spec = status.get("observedGeneration") == meta.get("generation")
            if by_guest and unchanged_spec:
                assert guest.stop_reason is not None
                policy = spec.get("restartPolicy", RestartPolicy.Always)
                log.info(
                    "%s/%s: the guest stopped by itself (%s); restart policy %s",
                    meta["namespace"],
                    meta["name"],
                    guest.stop_reason.value,
                    policy,
                )
                restart = policy == RestartPolicy.Always or (
                    policy == RestartPolicy.OnFailure
                    and guest.stop_reason is not StopReason.shutdown
                )
                if (common.get_condition(status.get("conditions"), "Ready") or {}).get(
                    "reason"
                ) != guest.stop_reason.value:
                    report(deps, body, guest)  # say that it stopped before starting it again
                if not restart:
                    return
                deps.guests.start(uid)
                out.restarted = 1
                _event(deps, body, "Restarted", f"started again (restart policy {policy})")
            else:
                deps.guests.start(uid)
                _event(
                    deps,
                    body,
                    "Started",
                    f"domain {guest.name} started on {deps.settings.host_name}",
                )
    elif want == PowerState.Stopped:
        if state is State.running:
            timeout = float(spec.get("shutdownTimeoutSeconds", 60))
            clean = deps.guests.shutdown(uid, timeout)
            deps.guests.destroy(uid)
            _event(
                deps,
                body,
                "Stopped",
                "the guest shut down" if clean else f"forced off after {timeout:.0f}s",
            )
        elif state is State.paused:
            deps.guests.destroy(uid)
            _event(deps, body, "Stopped", "a paused guest is powered off at once")
        elif state is State.suspended:
            deps.guests.discard_saved(uid)
            _event(deps, body, "Stopped", "the saved memory was discarded")
    elif want == PowerState.Paused:
        if state is State.running:
            deps.guests.pause(uid)
            _event(deps, body, "Paused", "vCPUs stopped, memory kept")
        elif state is not State.paused:
            out.refused = f"cannot pause a server that is {_PHASES[state].value}"
    elif want == PowerState.Suspended:
        if state in (State.running, State.paused):
            deps.guests.save(uid)
            _event(deps, body, "Suspended", "memory saved to disk (managed save)")
        elif state is not State.suspended:
            out.refused = f"cannot suspend a server that is {_PHASES[state].value}"
    out.guest = _refresh(deps, uid)


BY_GUEST = (StopReason.shutdown, StopReason.crashed, StopReason.failed)

_PHASES = {
    State.running: Phase.ACTIVE,
    State.paused: Phase.PAUSED,
    State.suspended: Phase.SUSPENDED,
    State.shutoff: Phase.SHUTOFF,
    State.crashed: Phase.SHUTOFF,
    State.other: Phase.BUILD,
}


# ----------------------------------------------------------------------------- reporting


def report(
    deps: Deps,
    body: dict[str, Any],
    guest: GuestInfo | None,
    *,
    error: tuple[str, str] | None = None,
    waiting: tuple[str, str] | None = None,
    converged: Converged | None = None,
    migrating: str | None = None,
) -> None:
    """Write the observed state to the Server's status, only when it changed."""
    meta = body["metadata"]
    uid = meta["uid"]
    old = body.get("status") or {}
    last = deps.written.get(uid, {})
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
        rescued = domain_xml.is_rescue(guest.xml)
        if rescued and guest.state is State.running:
            phase = Phase.RESCUE
        status["powerState"] = guest.state.value
        status["domainName"] = guest.name
        if migrating is not None:
            phase = Phase.MIGRATING
            cond = ("True", "Migrating", f"{migrating}; running on {host} until then")
        elif guest.state is State.running:
            cond = ("True", "Rescued" if rescued else "Running", f"running on {host}")
        elif guest.stop_reason is not None and guest.stop_reason in BY_GUEST:
            cond = ("False", guest.stop_reason.value, f"the guest stopped by itself on {host}")
        else:
            cond = ("False", guest.state.value, f"domain is {guest.state.value.lower()} on {host}")
    status["phase"] = phase.value
    status["observedGeneration"] = generation
    conditions = _own_conditions(old)
    conditions = common.set_condition(conditions, "Ready", cond[0], cond[1], cond[2], generation)
    if converged is not None:
        if converged.refused:
            conditions = common.set_condition(
                conditions, "Converged", "False", "ActionNotAllowed", converged.refused, generation
            )
        else:
            conditions = common.set_condition(
                conditions, "Converged", "True", "AsDeclared", "", generation
            )
    status["conditions"] = conditions
    launched = old.get("launchedAt") or last.get("launchedAt")
    if launched is None and phase is Phase.ACTIVE:
        launched = common.timestamp()
    if launched is not None:
        status["launchedAt"] = launched
    reboot_seen = (
        (converged.reboot_seen if converged else None)
        or old.get("observedRebootRequestedAt")
        or last.get("observedRebootRequestedAt")
    )
    if reboot_seen:
        status["observedRebootRequestedAt"] = reboot_seen
    restarts = max(int(old.get("restartCount", 0)), int(last.get("restartCount", 0)))
    status["restartCount"] = restarts + (converged.restarted if converged else 0)
    if _unchanged(old, status) or _unchanged(last, status):
        return
    deps.kube.apply_status(server_ref(body), status)
    deps.written[uid] = status
    old_ready = common.get_condition(old.get("conditions"), "Ready") or {}
    if cond[1] in {r.value for r in BY_GUEST} and old_ready.get("reason") != cond[1]:
        policy = body["spec"].get("restartPolicy", RestartPolicy.Always)
        _event(
            deps,
            body,
            cond[1],
            f"the guest stopped by itself; restart policy {policy}",
            warn=cond[1] != StopReason.shutdown.value,
        )
    if (
        converged is not None
        and converged.refused
        and not _unchanged(old, {"conditions": status["conditions"]})
    ):
        _event(deps, body, "ActionNotAllowed", converged.refused, warn=True)
    if phase is Phase.ACTIVE and old.get("phase") != Phase.ACTIVE:
        log.info("%s/%s is ACTIVE on %s", meta["namespace"], meta["name"], host)


AGENT_CONDITIONS = ("Ready", "Converged")


def _own_conditions(old: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in old.get("conditions") or [] if c.get("type") in AGENT_CONDITIONS]


def _unchanged(old: dict[str, Any], new: dict[str, Any]) -> bool:
    for key, value in new.items():
        if key == "conditions":
            for new_c in value:
                old_c = common.get_condition(old.get("conditions"), new_c["type"]) or {}
                keys = ("status", "reason", "message", "observedGeneration")
                if any(old_c.get(k) != new_c.get(k) for k in keys):
                    return False
        elif old.get(key) != value:
            return False
    return True


# ----------------------------------------------------------------------------- console

CONSOLE_REQUEST = f"{constants.PREFIX}/console-request"
CONSOLE_BYTES = 64 * 1024


def serve_console(deps: Deps, body: dict[str, Any]) -> None:
    """Answer a console request (Nova's get_console_output): the tail of the serial console
    goes into the ConfigMap ``<server>-console``, marked with the request it answers."""
    meta = body["metadata"]
    asked = (meta.get("annotations") or {}).get(CONSOLE_REQUEST)
    if not asked or deps.console_served.get(meta["uid"]) == asked:
        return
    path = pathlib.Path(console_path(deps.settings, meta["uid"]))
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - CONSOLE_BYTES))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        text = ""
    deps.kube.put_configmap(
        meta["namespace"],
        f"{meta['name']}-console",
        {"console": text},
        annotations={CONSOLE_REQUEST: asked},
        owner=server_ref(body),
    )
    deps.console_served[meta["uid"]] = asked


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
    deps.console_served.pop(uid, None)
    log.info("deleted %s/%s from %s", meta["namespace"], meta["name"], deps.settings.host_name)


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
