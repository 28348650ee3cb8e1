"""``POST /servers/{id}/action``: each Nova action becomes a change of what the Server
declares (its power state, a reboot or rebuild request, its rescue, its flavor) or a
ServerMigration.

As Nova does, an action the server's state does not allow is refused at once with 409
(``Cannot 'pause' instance … while it is in vm_state stopped``), so a refused action never
lingers as an unmet declaration; the answer is 202 and the agent does the work.

Moves: ``os-migrateLive`` is a ServerMigration (target given or the scheduler's choice).
``migrate`` (cold, in Nova) of a running server moves it live in kubenova — the guest keeps
running — and of a stopped one cold; ``resize`` changes ``flavorRef`` (the controller resizes
a stopped server by a cold move; a running one is stopped first and started again when the
resize is done). Both end in VERIFY_RESIZE until ``confirmResize`` (or ``revertResize``,
which moves the server back, or restores its flavor). What a move waits for is kept in an
annotation on the Server (:data:`VERIFY`), never in the facade.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
import secrets
import time
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import MigrationPhase, PowerState, RebootType, Server, ServerMigration
from kubenova_openstack import lookup, names
from kubenova_openstack.compute import bodies, state
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import JSON_PATCH, KubeError
from kubenova_openstack.web import Req, reply

CONSOLE_REQUEST = f"{constants.PREFIX}/console-request"
VERIFY = f"{constants.PREFIX}/verify-resize"
"""JSON on a Server moved or resized through the facade, until confirmed or reverted:
``kind`` (migrate / resize), ``migration`` (the ServerMigration's name, for a migrate),
``fromHost``, ``fromFlavor``, ``restart`` (start it again once resized)."""
CONSOLE_TIMEOUT = 30.0


def _conflict(action: str, server: Server, nova: state.NovaState) -> Fault:
    return Fault(
        409,
        f"Cannot '{action}' instance {server.uid} while it is in vm_state {nova.vm_state}",
    )


def _require(
    action: str,
    server: Server,
    vm_states: tuple[str, ...],
    *,
    idle: bool = True,
    tolerated: tuple[str, ...] = (),
) -> state.NovaState:
    """Nova's check: the vm_state allows ``action`` and (``idle``) no task is under way but
    those ``tolerated``."""
    nova = state.of(server)
    if nova.vm_state not in vm_states:
        raise _conflict(action, server, nova)
    if idle and nova.task_state is not None and nova.task_state not in tolerated:
        raise Fault(
            409,
            f"Cannot '{action}' instance {server.uid} while it is in task_state {nova.task_state}",
        )
    return nova


async def _spec(req: Req, server: Server, spec: dict[str, Any]) -> dict[str, Any]:
    return await req.kube.patch(
        req.context.caller, constants.SERVERS, server.name, {"spec": spec}, req.project
    )


def _accepted() -> web.Response:
    return reply(status=202)


async def action(req: Req) -> web.StreamResponse:
    body = await req.body()
    if not isinstance(body, dict) or len(body) != 1:
        raise Fault(400, "There is no such action: the body must name exactly one action")
    ((name, args),) = body.items()
    handler = ACTIONS.get(name)
    if handler is None:
        raise Fault(400, f"There is no such action: {name}")
    server = await lookup.server(req, req.params["id"])
    return await handler(req, server, args if isinstance(args, dict) else {})


# ----------------------------------------------------------------------------- power


async def start(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("start", server, ("stopped",))
    if state.stays_off(server):
        # Declared Running already, off by itself and kept off by its restart policy: a
        # start request the agent acts on is a (hard) reboot request.
        await _spec(req, server, {"rebootRequestedAt": _now(), "rebootType": RebootType.Hard.value})
    else:
        await _spec(req, server, {"powerState": PowerState.Running.value})
    return _accepted()


async def stop(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    # A resize made with kubectl waits for a stop: stopping it is what lets it go on.
    _require("stop", server, ("active", "error"), tolerated=("resize_prep",))
    await _spec(req, server, {"powerState": PowerState.Stopped.value})
    return _accepted()


async def suspend(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("suspend", server, ("active",))
    await _spec(req, server, {"powerState": PowerState.Suspended.value})
    return _accepted()


async def resume(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("resume", server, ("suspended",))
    await _spec(req, server, {"powerState": PowerState.Running.value})
    return _accepted()


async def pause(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("pause", server, ("active",))
    await _spec(req, server, {"powerState": PowerState.Paused.value})
    return _accepted()


async def unpause(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("unpause", server, ("paused",))
    await _spec(req, server, {"powerState": PowerState.Running.value})
    return _accepted()


def _now() -> str:
    # Unique per request even within one second: a new value is a new reboot request.
    when = dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}Z"


async def reboot(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    kind = str(args.get("type", "")).upper()
    if kind not in ("SOFT", "HARD"):
        raise Fault(400, "Invalid input for field/attribute type.")
    if kind == "SOFT":
        _require("reboot", server, ("active",))
        await _spec(req, server, {"rebootRequestedAt": _now(), "rebootType": RebootType.Soft.value})
    else:
        _require(
            "reboot", server, ("active", "stopped", "paused", "suspended", "error"), idle=False
        )
        await _spec(
            req,
            server,
            {
                "rebootRequestedAt": _now(),
                "rebootType": RebootType.Hard.value,
                "powerState": PowerState.Running.value,
            },
        )
    return _accepted()


async def rescue(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    _require("rescue", server, ("active", "stopped", "error"))
    image_ref = args.get("rescue_image_ref")
    rescue_spec: dict[str, Any] = {}
    if image_ref:
        image = await lookup.image(req, lookup.ref_id(str(image_ref)))
        rescue_spec["imageRef"] = image["metadata"]["name"]
    await _spec(req, server, {"rescue": rescue_spec, "powerState": PowerState.Running.value})
    return reply({})


async def unrescue(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    _require("unrescue", server, ("rescued",))
    await req.kube.patch(
        req.context.caller,
        constants.SERVERS,
        server.name,
        [{"op": "remove", "path": "/spec/rescue"}],
        req.project,
        content_type=JSON_PATCH,
    )
    return _accepted()


# ----------------------------------------------------------------------------- rebuild


async def rebuild(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    """Nova's ``rebuild``: a new ``rebuildRequestedAt`` with the new ``imageRef`` (the agent
    makes the root disk, config drive and UEFI variables anew; same UID, host, flavor and
    addresses), and what else the request changes: name, metadata (replaced), description,
    key pair (2.54), user data (2.57), injected files (before 2.57). 202 with the server, in
    REBUILD until its host has done it. kubenova sets no guest password (``adminPass`` is
    accepted and ignored, as Nova with ``enable_instance_password = False``) and has no
    ephemeral disk to preserve."""
    from kubenova_openstack.compute import servers  # noqa: PLC0415

    asked = bodies.rebuild(args, req.version)
    given = asked.model_fields_set
    _require("rebuild", server, ("active", "stopped", "error"))
    image_id = lookup.ref_id(asked.imageRef)
    try:
        image = await lookup.image(req, image_id)
    except Fault as exc:
        if exc.status == 404:
            raise Fault(400, f"Image {image_id} could not be found.") from exc
        raise
    spec: dict[str, Any] = {"imageRef": image["metadata"]["name"], "rebuildRequestedAt": _now()}
    ann: dict[str, str | None] = servers.access_ips(asked)
    if "name" in given:
        if asked.name is None or not asked.name.strip():
            raise Fault(400, "Invalid input for field/attribute name.")
        ann[names.DISPLAY_NAME] = asked.name
    if "metadata" in given:
        ann[names.METADATA] = json.dumps(asked.metadata or {})
    if "description" in given:
        ann[names.DESCRIPTION] = asked.description
    if "key_name" in given:
        if asked.key_name is None:
            spec["sshKeys"], ann[names.KEY_NAME] = [], None
        else:
            pair = await servers.keypair(req, asked.key_name)
            spec["sshKeys"], ann[names.KEY_NAME] = [pair["public_key"]], asked.key_name
    if "user_data" in given:
        data = asked.user_data
        spec["userData"] = servers.b64_text(data, "user_data") if data else None
    if "personality" in given:
        spec["files"] = [
            {"path": f.path, "content": servers.b64_text(f.contents, "personality")}
            for f in asked.personality or []
        ]
    body: dict[str, Any] = {"spec": spec}
    if ann:
        body["metadata"] = {"annotations": ann}
    rebuilt = Server.parse(
        await req.kube.patch(req.context.caller, constants.SERVERS, server.name, body, req.project)
    )
    look = await servers.lookups(req, servers=[rebuilt])
    shown = servers.changed_view(req, rebuilt, look)
    shown.pop("OS-EXT-SRV-ATTR:user_data", None)  # 2.75+: user_data instead, to anyone
    if req.at_least("2.54"):
        shown["key_name"] = names.annotations_of(rebuilt).get(names.KEY_NAME)
    if req.at_least("2.57"):
        data = rebuilt.spec.userData
        shown["user_data"] = base64.b64encode(data.encode()).decode() if data else None
    return reply({"server": shown}, status=202)


# ----------------------------------------------------------------------------- console


async def console_output(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    """Ask the guest's agent for the console's tail (the annotation ``kubenova console``
    sets) and wait for its answer in the ConfigMap ``<server>-console-<host>``."""
    length = args.get("length")
    if length is not None:
        try:
            length = int(length)
        except (TypeError, ValueError) as exc:
            raise Fault(400, "Invalid input for field/attribute length.") from exc
        if length < -1:
            raise Fault(400, "Invalid input for field/attribute length.")
    nova = state.of(server)
    if nova.vm_state not in ("active", "stopped", "paused", "suspended", "rescued", "resized"):
        raise _conflict("get_console_output", server, nova)
    name, ns = server.name, req.project
    node = server.status.nodeName or ""
    nonce = secrets.token_hex(8)
    await req.kube.patch(
        req.context.caller,
        constants.SERVERS,
        name,
        {"metadata": {"annotations": {CONSOLE_REQUEST: nonce}}},
        ns,
    )
    deadline = time.monotonic() + CONSOLE_TIMEOUT
    while time.monotonic() < deadline:
        cm = await req.kube.get_or_none(
            req.context.caller, "configmaps", constants.console_configmap(name, node), ns, core=True
        )
        if cm is not None and names.annotations_of(cm).get(CONSOLE_REQUEST) == nonce:
            lines = str((cm.get("data") or {}).get("console", "")).splitlines()
            if length is not None and length >= 0:
                lines = lines[-length:] if length else []
            return reply({"output": "\n".join(lines)})
        await asyncio.sleep(0.2)
    raise Fault(
        409,
        f"The console of {server.uid} is not available: no answer "
        f"from its host's agent within {CONSOLE_TIMEOUT:.0f}s",
    )


# ----------------------------------------------------------------------------- moves


async def _migration(req: Req, server: Server, target: str | None, prefix: str) -> dict[str, Any]:
    name = server.name
    spec: dict[str, Any] = {"serverRef": name}
    if target:
        spec["targetNode"] = target
    body = {
        "apiVersion": constants.API_VERSION,
        "kind": "ServerMigration",
        "metadata": {
            "generateName": f"{name[:40]}-{prefix}-",
            "namespace": req.project,
            "annotations": {names.USER_ID: req.context.user_id},
        },
        "spec": spec,
    }
    return await req.kube.create(req.context.caller, constants.SERVERMIGRATIONS, body, req.project)


#: Nova's ``hostname`` parameter type.
HOST_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,255}$")


async def _host(req: Req, host: Any) -> str | None:
    """A ``host`` asked for: null or empty (the scheduler chooses), or a host that is there."""
    if host is None or host == "":
        return None
    if not isinstance(host, str) or not HOST_NAME.match(host):
        raise Fault(400, f"Invalid input for field/attribute host. Value: {host!r}.")
    found = await req.kube.get_or_none(req.context.caller, constants.HYPERVISORS, host)
    if found is None:
        raise Fault(400, f"Compute host {host} could not be found.")
    return host


async def live_migrate(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    """Nova's ``os-migrateLive``: ``host`` or the scheduler's choice; ``block_migration``
    ``auto`` (kubenova detects shared storage per migration, so every value means that)."""
    if "host" not in args:
        raise Fault(400, "Invalid input for field/attribute os-migrateLive: 'host' is required")
    if req.at_least("2.25") and args.get("block_migration", "auto") not in (
        "auto",
        True,
        False,
        "True",
        "False",
        "true",
        "false",
    ):
        raise Fault(400, "Invalid input for field/attribute block_migration.")
    _require("os-migrateLive", server, ("active", "paused"))
    host = await _host(req, args.get("host"))
    await _migration(req, server, host, "live")
    return _accepted()


async def migrate(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    if "host" in args and not req.at_least("2.56"):
        raise Fault(400, "Invalid input for field/attribute migrate: 'host' needs 2.56")
    nova = _require("migrate", server, ("active", "stopped"))
    host = await _host(req, args.get("host"))
    made = await _migration(req, server, host, "migrate")
    verify = {
        "kind": "migrate",
        "migration": made["metadata"]["name"],
        "fromHost": server.status.nodeName,
        "live": nova.vm_state == "active",
    }
    await _annotate(req, server, {VERIFY: json.dumps(verify)})
    return _accepted()


async def resize(req: Req, server: Server, args: dict[str, Any]) -> web.Response:
    ref = args.get("flavorRef")
    if not ref:
        raise Fault(400, "Resize requests require 'flavorRef' attribute.")
    nova = _require("resize", server, ("active", "stopped"))
    flavor = await lookup.flavor(req, lookup.ref_id(str(ref)))
    new = flavor["metadata"]["name"]
    old = server.spec.flavorRef
    if new == old:
        raise Fault(400, "When resizing, instances must change flavor!")
    current = server.status.flavor.diskGiB if server.status.flavor is not None else 0
    if int((flavor.get("spec") or {}).get("diskGiB", 0)) < current:
        raise Fault(400, "Resizing to a smaller disk flavor is not allowed.")
    await _forget_failed_resizes(req, server, new)
    verify = {
        "kind": "resize",
        "fromFlavor": old,
        "fromHost": server.status.nodeName,
        "restart": nova.vm_state == "active",
    }
    await _annotate(req, server, {VERIFY: json.dumps(verify)})
    changes: dict[str, Any] = {"flavorRef": new}
    if nova.vm_state == "active":
        changes["powerState"] = PowerState.Stopped.value  # kubenova resizes a stopped server
    await _spec(req, server, changes)
    return _accepted()


async def _forget_failed_resizes(req: Req, server: Server, flavor: str) -> None:
    """The controller tries a resize to a flavor once; asked again (as Nova lets one retry a
    resize that failed), the failed attempts go, so that it tries again."""
    moves = await req.kube.list(req.context.caller, constants.SERVERMIGRATIONS, req.project)
    for m in (ServerMigration.parse(i) for i in moves):
        if (
            m.spec.serverRef == server.name
            and m.spec.flavorRef == flavor
            and m.status.serverUID in (None, server.uid)
            and m.phase is MigrationPhase.Failed
        ):
            try:
                await req.kube.delete(
                    req.context.caller, constants.SERVERMIGRATIONS, m.name, req.project
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise


async def _annotate(req: Req, server: Server, ann: dict[str, str | None]) -> None:
    await req.kube.patch(
        req.context.caller,
        constants.SERVERS,
        server.name,
        {"metadata": {"annotations": ann}},
        req.project,
    )


def pending_verify(server: Server) -> dict[str, Any] | None:
    text = names.annotations_of(server).get(VERIFY)
    if not text:
        return None
    try:
        found: dict[str, Any] = json.loads(text)
    except ValueError:
        return None
    return found


async def confirm_resize(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    from kubenova_openstack.compute import servers  # noqa: PLC0415

    look = await servers.lookups(req, servers=[server])
    if server.uid not in look.verify_resize:
        raise _conflict("confirmResize", server, state.of(server))
    await _annotate(req, server, {VERIFY: None})
    return reply(status=204)


async def revert_resize(req: Req, server: Server, _: dict[str, Any]) -> web.Response:
    """Back to where it was: a migrate moves it back to its old host, a resize restores the
    old flavor (kubenova disks only grow: the disk keeps the larger size)."""
    from kubenova_openstack.compute import servers  # noqa: PLC0415

    look = await servers.lookups(req, servers=[server])
    verify = pending_verify(server)
    if server.uid not in look.verify_resize or verify is None:
        raise _conflict("revertResize", server, state.of(server))
    await _annotate(req, server, {VERIFY: None})
    if verify.get("kind") == "migrate" and verify.get("fromHost"):
        await _migration(req, server, str(verify["fromHost"]), "revert")
    elif verify.get("kind") == "resize" and verify.get("fromFlavor"):
        await _spec(req, server, {"flavorRef": verify["fromFlavor"]})
    return _accepted()


ACTIONS = {
    "os-start": start,
    "os-stop": stop,
    "suspend": suspend,
    "resume": resume,
    "pause": pause,
    "unpause": unpause,
    "reboot": reboot,
    "rescue": rescue,
    "unrescue": unrescue,
    "rebuild": rebuild,
    "os-getConsoleOutput": console_output,
    "os-migrateLive": live_migrate,
    "migrate": migrate,
    "resize": resize,
    "confirmResize": confirm_resize,
    "revertResize": revert_resize,
}
