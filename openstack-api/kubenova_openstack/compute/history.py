"""A server's history as Nova shows it: ``os-instance-actions`` from the Events kubenova's
controller and agents record on the Server (each Event that is one of Nova's actions —
Scheduled is ``create``, Stopped ``stop``, Migrated ``live-migration`` / ``migrate`` /
``resize``, … — becomes an action whose request id is ``req-<Event UID>``), and
``os-migrations`` / ``/servers/{id}/migrations`` from ServerMigrations.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import Server
from kubenova_openstack import lookup, names
from kubenova_openstack.compute import views
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req, reply

ACTIONS = {
    "Scheduled": "create",
    "Stopped": "stop",
    "Restarted": "start",
    "Suspended": "suspend",
    "Resumed": "resume",
    "Paused": "pause",
    "Unpaused": "unpause",
    "Rebooted": "reboot",
    "RebootRefused": "reboot",
    "Rescued": "rescue",
    "Unrescued": "unrescue",
    "Rebuilt": "rebuild",
    "RebuildRefused": "rebuild",
    "Resizing": "resize",
    "MigrationFailed": "migrate",
}


def _action(event: dict[str, Any], stopped_before: bool) -> str | None:
    reason = str(event.get("reason"))
    if reason == "Started":
        # Nova's start is the start of a stopped server. The agent records no Started for a
        # Server's first boot (part of create); earlier versions did, and that one is no
        # action either.
        return "start" if stopped_before else None
    if reason == "Migrated":
        message = str(event.get("message") or "")
        if "resized" in message:
            return "resize"
        return "live-migration" if message.startswith("live-migrated") else "migrate"
    return ACTIONS.get(reason)


def _when(event: dict[str, Any]) -> str | None:
    return views.usage_time(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
    )


async def _actions(req: Req, server: Server) -> list[dict[str, Any]]:
    uid = server.uid
    events = await req.kube.list(
        req.context.caller, "events", req.project, core=True, fields=f"involvedObject.uid={uid}"
    )
    return actions_of(events)


def actions_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Nova actions a Server's Events stand for, oldest first."""
    events = sorted(events, key=lambda e: (_when(e) or "", e["metadata"]["name"]))
    out = []
    stopped = False
    for event in events:
        name = _action(event, stopped)
        if event.get("reason") == "Stopped":
            stopped = True
        if name is None:
            continue
        out.append(
            {
                "action": name,
                "event": event,
                "request_id": f"req-{event['metadata']['uid']}",
                "start_time": _when(event),
                "failed": event.get("type") == "Warning",
            }
        )
    return out


def _action_view(req: Req, server: Server, act: dict[str, Any]) -> dict[str, Any]:
    ann = names.annotations_of(server)
    out: dict[str, Any] = {
        "action": act["action"],
        "instance_uuid": server.uid,
        "message": "Error" if act["failed"] else None,
        "project_id": server.namespace,
        "request_id": act["request_id"],
        "start_time": act["start_time"],
        "user_id": ann.get(names.USER_ID, ""),
    }
    if req.at_least("2.58"):
        out["updated_at"] = act["start_time"]
    return out


async def actions_index(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    acts = list(reversed(await _actions(req, server)))  # newest first, as Nova lists them
    limit = req.limit() if req.at_least("2.58") else None
    if limit is not None:
        acts = acts[:limit]
    return reply({"instanceActions": [_action_view(req, server, a) for a in acts]})


async def action_show(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    admin = await req.kube.is_admin(req.context.caller)
    for act in await _actions(req, server):
        if act["request_id"] != req.params["request_id"]:
            continue
        out = _action_view(req, server, act)
        if admin or req.at_least("2.51"):
            node = server.status.nodeName
            event: dict[str, Any] = {
                "event": f"compute_{act['action'].replace('-', '_')}_instance",
                "finish_time": act["start_time"],
                "result": "Error" if act["failed"] else "Success",
                "start_time": act["start_time"],
            }
            if admin:
                event["traceback"] = None
            if req.at_least("2.62"):
                event["hostId"] = views.host_id(server.namespace or "", node)
                if admin:
                    event["host"] = node
            if req.at_least("2.84") and admin:
                event["details"] = act["event"].get("message") if act["failed"] else None
            out["events"] = [event]
        return reply({"instanceAction": out})
    raise Fault(
        404,
        f"Action for request_id {req.params['request_id']} on instance "
        f"{req.params['id']} not found",
    )


# ----------------------------------------------------------------------------- migrations

STATUS = {
    None: "queued",
    "Pending": "queued",
    "PreChecking": "preparing",
    "Preparing": "preparing",
    "Running": "running",
    "Succeeded": "completed",
    "Failed": "failed",
}


def _migration_type(m: dict[str, Any], server: Server | None) -> str:
    status = m.get("status") or {}
    if status.get("live") or (status.get("live") is None and not m["spec"].get("flavorRef")):
        return "live-migration"
    return "resize" if m["spec"].get("flavorRef") else "migration"


def _flavor_number(name: str | None) -> int:
    return zlib.crc32((name or "").encode()) & 0x7FFFFFF if name else 0


def _migration_view(
    req: Req, m: dict[str, Any], server_uid: str | None, *, detail: bool = False
) -> dict[str, Any]:
    status = m.get("status") or {}
    meta = m["metadata"]
    mtype = _migration_type(m, None)
    phase = STATUS.get(status.get("phase"), "running")
    if mtype != "live-migration" and phase == "completed":
        phase = "finished"
    updated = status.get("completedAt") or status.get("startedAt") or meta.get("creationTimestamp")
    uid = status.get("serverUID") or server_uid or ""
    out: dict[str, Any] = {
        "created_at": views.usage_time(meta.get("creationTimestamp")),
        "dest_compute": status.get("targetNode"),
        "dest_host": status.get("targetNode"),
        "dest_node": status.get("targetNode"),
        "id": int(hashlib.sha256(meta["uid"].encode()).hexdigest()[:7], 16),
        "source_compute": status.get("sourceNode"),
        "source_node": status.get("sourceNode"),
        "status": phase,
        "updated_at": views.usage_time(updated),
    }
    if detail:
        progress = status.get("progress") or {}
        disk = int(progress.get("diskProcessedBytes", 0))
        out.update(
            {
                "server_uuid": uid,
                "memory_total_bytes": int(progress.get("dataTotalBytes", 0)),
                "memory_processed_bytes": int(progress.get("dataProcessedBytes", 0)) - disk,
                "memory_remaining_bytes": int(progress.get("dataRemainingBytes", 0)),
                "disk_total_bytes": 0,
                "disk_processed_bytes": disk,
                "disk_remaining_bytes": 0,
            }
        )
    else:
        old = ((status.get("flavor") or {}).get("name")) if m["spec"].get("flavorRef") else None
        out.update(
            {
                "instance_uuid": uid,
                "new_instance_type_id": _flavor_number(m["spec"].get("flavorRef") or old),
                "old_instance_type_id": _flavor_number(old),
            }
        )
        if req.at_least("2.23"):
            out["migration_type"] = mtype
            if mtype == "live-migration" and phase in ("queued", "preparing", "running"):
                href = f"servers/{uid}/migrations/{out['id']}"
                out["links"] = [
                    {"href": f"{req.base}/{href}", "rel": "self"},
                    {"href": f"{req.settings.base_url}/{href}", "rel": "bookmark"},
                ]
    if req.at_least("2.59"):
        out["uuid"] = meta["uid"]
    if req.at_least("2.80"):
        out["user_id"] = names.annotations_of(m).get(names.USER_ID, "")
        out["project_id"] = meta["namespace"]
    return out


async def migrations(req: Req) -> web.Response:
    """``GET /os-migrations``: every project's when RBAC allows, else the caller's project."""
    try:
        items = await req.kube.list(req.context.caller, constants.SERVERMIGRATIONS)
    except KubeError as exc:
        if exc.status != 403:
            raise
        items = await req.kube.list(req.context.caller, constants.SERVERMIGRATIONS, req.project)
    wanted_server = req.query("instance_uuid")
    out = []
    for m in sorted(items, key=lambda i: i["metadata"].get("creationTimestamp", ""), reverse=True):
        view = _migration_view(req, m, None)
        if wanted_server and view["instance_uuid"] != wanted_server:
            continue
        if req.query("migration_type") and view.get("migration_type") != req.query(
            "migration_type"
        ):
            continue
        if req.query("status") and view["status"] != req.query("status"):
            continue
        if req.query("source_compute") and view["source_compute"] != req.query("source_compute"):
            continue
        out.append(view)
    limit = req.limit() if req.at_least("2.59") else None
    if limit is not None:
        out = out[:limit]
    return reply({"migrations": out})


async def server_migrations(req: Req) -> web.Response:
    """``GET /servers/{id}/migrations``: the live migrations in progress (Nova's shape)."""
    server = await lookup.server(req, req.params["id"])
    items = await req.kube.list(req.context.caller, constants.SERVERMIGRATIONS, req.project)
    out = []
    for m in items:
        if m["spec"].get("serverRef") != server.name:
            continue
        view = _migration_view(req, m, server.uid, detail=True)
        if (
            view["status"] in ("queued", "preparing", "running")
            and _migration_type(m, server) == "live-migration"
        ):
            out.append(view)
    return reply({"migrations": out})


async def abort_migration(req: Req) -> web.Response:
    """``DELETE /servers/{id}/migrations/{mid}``: deleting the ServerMigration cancels it."""
    server = await lookup.server(req, req.params["id"])
    items = await req.kube.list(req.context.caller, constants.SERVERMIGRATIONS, req.project)
    for m in items:
        if m["spec"].get("serverRef") != server.name:
            continue
        if str(_migration_view(req, m, None)["id"]) == req.params["mid"]:
            await req.kube.delete(
                req.context.caller,
                constants.SERVERMIGRATIONS,
                m["metadata"]["name"],
                req.project,
            )
            return reply(status=202)
    raise Fault(404, f"Migration {req.params['mid']} could not be found.")
