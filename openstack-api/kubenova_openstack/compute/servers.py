"""``/servers``: create (202 + Location), list, list with details (Nova's filters), show,
update, delete (204), and metadata — over namespaced Servers, as the caller.

A Server made here gets a generated name (its Nova name is free text and kept in an
annotation, see :mod:`kubenova_openstack.names`) and a label with its UID, its id. With
``min_count``/``max_count`` several are made, named as Nova names them (``name-1``, …), under
one reservation id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import MigrationPhase, PowerState, Server, ServerMigration
from kubenova_openstack import lookup, names
from kubenova_openstack.compute import actions, bodies, networks, quotas, views
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req, reply

log = logging.getLogger(__name__)


def move_task(server: Server, migrations: list[ServerMigration]) -> str | None:
    """Where a move of ``server`` stands: Nova's task state while a ServerMigration moves it
    (``migrating`` live, ``resize_migrating`` cold), ``resize_finish`` while a resized server
    starts again, ``verify`` when a move or resize made through the facade waits for
    confirmation (VERIFY_RESIZE), ``resize_reverting`` when the controller failed a resize
    made through the facade, ``resize_failed`` when it failed one made otherwise (a
    ``flavorRef`` changed with kubectl), None otherwise."""
    status = server.status
    mine = [
        m
        for m in migrations
        if m.spec.serverRef == server.name and m.status.serverUID in (None, server.uid)
    ]
    for m in mine:
        if m.active:
            return "migrating" if m.status.live in (True, None) else "resize_migrating"
    resized = status.flavor is not None and status.flavor.name == server.spec.flavorRef
    tried = [
        m
        for m in mine
        if m.spec.flavorRef == server.spec.flavorRef
        and m.status.reason != constants.FLAVOR_NOT_DECLARED
    ]
    failed = (
        status.flavor is not None
        and not resized
        and bool(tried)
        and all(m.phase is MigrationPhase.Failed for m in tried)
    )
    verify = actions.pending_verify(server)
    if verify is None:
        return "resize_failed" if failed else None
    if verify.get("kind") == "migrate":
        named = [m for m in mine if m.name == verify.get("migration")]
        if named and named[0].phase is MigrationPhase.Succeeded:
            return "verify"
        return None
    if not resized:
        if failed:
            return "resize_reverting"  # the controller's attempt failed: back, as Nova
        return "resize_migrating"
    if verify.get("restart") and status.phase != "ACTIVE":
        return "resize_finish"
    return "verify"


async def finish_resizes(req: Req, servers: list[Server], look: views.Lookups) -> None:
    """A running server resized through the facade was stopped for it: start it again once
    the resize is done (Nova's finish_resize powers it on). A resize the controller could not
    do (its migration failed) is undone as Nova undoes one that failed: the old flavor again,
    started again if it ran, no confirmation pending. Done by whichever request sees it
    first; repeating it changes nothing."""
    for server in servers:
        verify = actions.pending_verify(server)
        if verify is None or verify.get("kind") != "resize":
            continue
        task = look.migrating.get(server.uid)
        patch: dict[str, Any] = {}
        if task == "resize_reverting" and verify.get("fromFlavor"):
            log.info("resize of %s failed: back to %s", server.uid, verify["fromFlavor"])
            patch["metadata"] = {"annotations": {actions.VERIFY: None}}
            patch["spec"] = {"flavorRef": verify["fromFlavor"]}
            if verify.get("restart"):
                patch["spec"]["powerState"] = PowerState.Running.value
        elif (
            task == "resize_finish"
            and verify.get("restart")
            and server.spec.powerState is not PowerState.Running
        ):
            log.info("resize of %s done: starting it again", server.uid)
            patch["spec"] = {"powerState": PowerState.Running.value}
        if not patch:
            continue
        try:
            await req.kube.patch(
                req.context.caller, constants.SERVERS, server.name, patch, server.namespace
            )
        except KubeError as exc:
            if exc.status not in (403, 404, 409):
                raise
            log.warning("could not finish the resize of %s: %s", server.uid, exc)


async def lookups(req: Req, *, servers: list[Server] | None = None) -> views.Lookups:
    """Flavors, images, hosts, groups and migrations for the views, read concurrently."""
    kube, caller, ns = req.kube, req.context.caller, req.project

    async def hosts() -> dict[str, dict[str, Any]] | None:
        try:
            items = await kube.list(caller, constants.HYPERVISORS)
        except KubeError as exc:
            if exc.status == 403:
                return None
            raise
        return {i["metadata"]["name"]: i for i in items}

    flavors, images, hvs, admin, groups, moves = await asyncio.gather(
        kube.list_readable(caller, constants.FLAVORS),
        kube.list_readable(caller, constants.IMAGES),
        hosts(),
        kube.is_admin(caller),
        kube.list_readable(caller, constants.SERVERGROUPS, ns),
        kube.list_readable(caller, constants.SERVERMIGRATIONS, ns),
    )
    migrations = [ServerMigration.parse(m) for m in moves]
    look = views.Lookups(
        flavors={f["metadata"]["name"]: f for f in flavors},
        images={i["metadata"]["name"]: i for i in images},
        hypervisors=hvs,
        admin=admin,
        groups={g["metadata"]["name"]: g for g in groups},
    )
    for server in servers or []:
        task = move_task(server, migrations)
        if task == "verify":
            look.verify_resize.add(server.uid)
        elif task == "resize_failed":
            look.resize_failed.add(server.uid)
        elif task is not None:
            look.migrating[server.uid] = task
    return look


# ----------------------------------------------------------------------------- create


def b64_text(value: Any, what: str) -> str:
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, ValueError) as exc:
        raise Fault(400, f"Invalid input for field/attribute {what}: not base64 text") from exc


async def create(req: Req) -> web.Response:
    body = bodies.create_server(await req.body(), req.version)
    server = body.server
    name = server.name
    if not name.strip():
        raise Fault(400, "Invalid input for field/attribute name.")
    image_ref, flavor_ref = server.imageRef, str(server.flavorRef)
    mappings = (server.block_device_mapping or []) + (server.block_device_mapping_v2 or [])
    volumes = [
        d for d in mappings if d.source_type != "image" or d.destination_type not in (None, "local")
    ]
    if volumes or (mappings and not image_ref):
        raise Fault(400, "kubenova boots from images only (no volumes)")
    if not image_ref:
        raise Fault(400, "Missing imageRef attribute")
    for group in server.security_groups or []:
        if group.name != "default":
            # kubenova has no security groups; every server is in the implied 'default'.
            raise Fault(400, f"Unable to find security_group with name or id '{group.name}'")
    if server.tags:
        raise Fault(400, "kubenova keeps no server tags: leave 'tags' out")
    if server.trusted_image_certificates:
        raise Fault(
            400, "kubenova verifies images by their sha256, not by certificates: leave "
            "'trusted_image_certificates' out"
        )  # fmt: skip
    image_id, flavor_id = lookup.ref_id(image_ref), lookup.ref_id(flavor_ref)
    try:
        image = await lookup.image(req, image_id)
    except Fault as exc:
        if exc.status == 404:
            raise Fault(400, f"Image {image_id} could not be found.") from exc
        raise
    try:
        flavor = await lookup.flavor(req, flavor_id)
    except Fault as exc:
        if exc.status == 404:
            raise Fault(400, f"Flavor {flavor_id} could not be found.") from exc
        raise
    min_count = int(server.min_count or 1)
    max_count = int(server.max_count or min_count)
    if min_count < 1 or max_count < min_count:
        raise Fault(400, "min_count must be <= max_count and both at least 1")
    max_count = await quotas.room_for(req, flavor, min_count, max_count)
    spec: dict[str, Any] = {
        "flavorRef": flavor["metadata"]["name"],
        "imageRef": image["metadata"]["name"],
    }
    nics = await networks.attachments(req, server.networks)
    if nics is not None:
        spec["networks"] = nics
    annotations: dict[str, str] = {names.USER_ID: req.context.user_id}
    if server.user_data:
        spec["userData"] = b64_text(server.user_data, "user_data")
    if server.personality is not None:
        spec["files"] = [
            {"path": f.path, "content": b64_text(f.contents, "personality")}
            for f in server.personality
        ]
    if server.availability_zone:
        zone, _, host = server.availability_zone.partition(":")
        if zone:
            spec["availabilityZone"] = zone
        if host:
            spec["hostName"] = host.partition(":")[0]
    if server.host or server.hypervisor_hostname:
        spec["hostName"] = server.host or server.hypervisor_hostname
    if server.key_name:
        pair = await keypair(req, server.key_name)
        spec["sshKeys"] = [pair["public_key"]]
        annotations[names.KEY_NAME] = server.key_name
    if server.metadata:
        annotations[names.METADATA] = json.dumps(server.metadata)
    annotations.update({k: v for k, v in access_ips(server).items() if v})
    if server.description is not None:
        annotations[names.DESCRIPTION] = server.description
    hints = body.hints or body.legacy_hints or {}
    group_hint = hints.get("group")
    if isinstance(group_hint, list) and len(group_hint) == 1:
        group_hint = group_hint[0]  # Nova takes the group as a one-item list too
    if group_hint is not None and not isinstance(group_hint, str):
        raise Fault(400, "Invalid input for field/attribute group. The group is a server group id")
    if group_hint:
        spec["serverGroupRef"] = await _group_name(req, group_hint)
    reservation = f"r-{secrets.token_hex(4)}"
    annotations[names.RESERVATION] = reservation
    made = []
    for index in range(max_count):
        display = name if max_count == 1 else f"{name}-{index + 1}"
        made.append(await _create_one(req, display, index, spec, annotations))
    if server.return_reservation_id:
        return reply({"reservation_id": reservation}, status=202)
    uid = made[0].uid
    out = {
        "server": {
            "id": uid,
            "links": views.links(req, "servers", uid),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
        }
    }
    return reply(out, status=202, headers={"Location": f"{req.base}/servers/{uid}"})


async def _create_one(
    req: Req, display: str, index: int, spec: dict[str, Any], annotations: dict[str, str]
) -> Server:
    """One Server; its id label is added right after (the UID is known only then). A Server
    whose label write is lost is still found, by a list."""
    body = {
        "apiVersion": constants.API_VERSION,
        "kind": "Server",
        "metadata": {
            "generateName": names.slug(display) + "-",
            "namespace": req.project,
            "annotations": {
                **annotations,
                names.DISPLAY_NAME: display,
                names.LAUNCH_INDEX: str(index),
            },
        },
        "spec": spec,
    }
    kube, caller = req.kube, req.context.caller
    made = Server.parse(await kube.create(caller, constants.SERVERS, body, req.project))
    patch = {"metadata": {"labels": {names.SERVER_ID: made.uid}}}
    try:
        made = Server.parse(
            await kube.patch(caller, constants.SERVERS, made.name, patch, req.project)
        )
    except KubeError as exc:
        if exc.status not in (403, 404, 409):
            raise
    return made


async def keypair(req: Req, name: str) -> dict[str, Any]:
    from kubenova_openstack.compute import keypairs  # noqa: PLC0415

    pair = await keypairs.find(req, name)
    if pair is None:
        raise Fault(400, f"Invalid key_name provided: {name}")
    return pair


async def _group_name(req: Req, group_id: str) -> str:
    for group in await req.kube.list(req.context.caller, constants.SERVERGROUPS, req.project):
        if group["metadata"]["uid"] == group_id:
            return str(group["metadata"]["name"])
    raise Fault(400, f"Invalid server group {group_id}: not found")


# ----------------------------------------------------------------------------- read

STATUSES = {
    "ACTIVE",
    "BUILD",
    "DELETED",
    "ERROR",
    "HARD_REBOOT",
    "MIGRATING",
    "PASSWORD",
    "PAUSED",
    "REBOOT",
    "REBUILD",
    "RESCUE",
    "RESIZE",
    "REVERT_RESIZE",
    "SHELVED",
    "SHELVED_OFFLOADED",
    "SHUTOFF",
    "SOFT_DELETED",
    "SUSPENDED",
    "UNKNOWN",
    "VERIFY_RESIZE",
}


async def _listed(req: Req) -> list[Server]:
    all_tenants = req.query("all_tenants") not in (None, "0", "false", "False")
    namespace = None if all_tenants else req.project
    if all_tenants and (req.query("project_id") or req.query("tenant_id")):
        namespace = req.query("project_id") or req.query("tenant_id")
    return await req.kube.objects(req.context.caller, Server, namespace)


def _filter(req: Req, servers: list[Server], look: views.Lookups) -> list[Server]:
    out = servers
    name = req.query("name")
    if name:
        try:
            pattern = re.compile(name)
        except re.error as exc:
            raise Fault(400, f"Invalid name filter: {exc}") from exc
        out = [s for s in out if pattern.search(names.display_name(s))]
    status = req.query("status")
    if status:
        wanted = {s.upper() for s in req.queries("status")}
        unknown = wanted - STATUSES
        if unknown and req.at_least("2.38"):
            raise Fault(400, f"Invalid status value: {', '.join(sorted(unknown))}")
        out = [s for s in out if views.nova_state(s, look).status in wanted]
    image = req.query("image")
    if image:
        by_uid = {i["metadata"]["uid"]: n for n, i in look.images.items()}
        out = [s for s in out if s.spec.imageRef == by_uid.get(image, image)]
    flavor = req.query("flavor")
    if flavor:
        named = [n for n, f in look.flavors.items() if names.flavor_id(f) == flavor]
        out = [s for s in out if s.spec.flavorRef in (named or [flavor])]
    for key in ("host", "node"):
        value = req.query(key)
        if value and look.admin:
            out = [s for s in out if s.status.nodeName == value]
    reservation = req.query("reservation_id")
    if reservation:
        out = [s for s in out if names.annotations_of(s).get(names.RESERVATION) == reservation]
    key_name = req.query("key_name")
    if key_name and req.at_least("2.83"):
        out = [s for s in out if names.annotations_of(s).get(names.KEY_NAME) == key_name]
    zone = req.query("availability_zone")
    if zone and (look.admin or req.at_least("2.83")):
        out = [s for s in out if views._zone(s, look) == zone]
    since = req.query("changes-since")
    if since:
        out = [s for s in out if _updated(s) >= _iso(since)]
    before = req.query("changes-before")
    if before and req.at_least("2.66"):
        out = [s for s in out if _updated(s) <= _iso(before)]
    return out


def _iso(value: str) -> str:
    text = views.nova_time(value if value.endswith("Z") or "+" in value else value + "Z")
    if text is None:
        raise Fault(400, f"Invalid time {value}")
    return text


def _updated(server: Server) -> str:
    return views.nova_time(views.updated(server)) or ""


def _page(req: Req, servers: list[Server]) -> tuple[list[Server], str | None]:
    """Newest first (Nova's default sort), then ``marker`` and ``limit``."""
    reverse = (req.query("sort_dir") or "desc") == "desc"
    servers = sorted(
        servers,
        key=lambda s: (views.created(s), s.uid),
        reverse=reverse,
    )
    marker = req.query("marker")
    if marker:
        ids = [s.uid for s in servers]
        if marker not in ids:
            raise Fault(400, f"marker [{marker}] not found")
        servers = servers[ids.index(marker) + 1 :]
    count = req.limit()
    if count is None:
        return servers, None
    if len(servers) <= count:
        return servers, None
    page = servers[:count]
    return page, page[-1].uid if page else None


def _with_links(
    req: Req, key: str, items: list[dict[str, Any]], next_marker: str | None, path: str
) -> dict[str, Any]:
    out: dict[str, Any] = {key: items}
    if next_marker is not None:
        out[f"{key}_links"] = [
            {
                "href": f"{req.base}/{path}?limit={req.query('limit')}&marker={next_marker}",
                "rel": "next",
            }
        ]
    return out


async def index(req: Req) -> web.Response:
    servers = await _listed(req)
    look = await lookups(req, servers=servers)
    page, nxt = _page(req, _filter(req, servers, look))
    shown = [views.server_basic(req, s) for s in page]
    return reply(_with_links(req, "servers", shown, nxt, "servers"))


async def detail(req: Req) -> web.Response:
    servers = await _listed(req)
    look = await lookups(req, servers=servers)
    await finish_resizes(req, servers, look)
    page, nxt = _page(req, _filter(req, servers, look))
    shown = [views.server_detail(req, s, look) for s in page]
    return reply(_with_links(req, "servers", shown, nxt, "servers/detail"))


async def show(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    look = await lookups(req, servers=[server])
    await finish_resizes(req, [server], look)
    return reply({"server": views.server_detail(req, server, look, show_groups=True)})


# ----------------------------------------------------------------------------- change


async def update(req: Req) -> web.Response:
    changes = bodies.update_server(await req.body(), req.version)
    given = changes.model_fields_set
    server = await lookup.server(req, req.params["id"])
    ann: dict[str, str | None] = access_ips(changes)
    if "name" in given:
        if changes.name is None or not changes.name.strip():
            raise Fault(400, "Invalid input for field/attribute name.")
        ann[names.DISPLAY_NAME] = changes.name
    if "description" in given:
        ann[names.DESCRIPTION] = changes.description
    if ann:
        server = Server.parse(
            await req.kube.patch(
                req.context.caller,
                constants.SERVERS,
                server.name,
                {"metadata": {"annotations": ann}},
                req.project,
            )
        )
    look = await lookups(req, servers=[server])
    return reply({"server": changed_view(req, server, look)})


def access_ips(
    asked: bodies.ServerCreate | bodies.ServerUpdate | bodies.Rebuild,
) -> dict[str, str | None]:
    """The annotations that keep the ``accessIPv4`` / ``accessIPv6`` a body gives (Nova keeps
    them as the server's preferred addresses for the user to read, and uses them for
    nothing)."""
    out: dict[str, str | None] = {}
    if "accessIPv4" in asked.model_fields_set:
        out[names.ACCESS_IPV4] = asked.accessIPv4
    if "accessIPv6" in asked.model_fields_set:
        out[names.ACCESS_IPV6] = asked.accessIPv6
    return out


def changed_view(req: Req, server: Server, look: views.Lookups) -> dict[str, Any]:
    """A server as ``PUT /servers/{id}`` (and, with a few more keys, ``rebuild``) answers:
    the show view without the extended attributes before 2.75, all of it since."""
    if req.at_least("2.75"):
        return views.server_detail(req, server, look, show_groups=True)
    shown = views.server_detail(req, server, look)
    for key in [k for k in shown if k.startswith(("OS-EXT-", "OS-SRV-USG", "os-extended"))]:
        shown.pop(key)
    for key in ("key_name", "config_drive", "host_status"):
        shown.pop(key, None)
    if req.at_least("2.71"):
        group = server.spec.serverGroupRef
        found = look.groups.get(str(group)) if group else None
        shown["server_groups"] = [found["metadata"]["uid"]] if found else []
    return shown


async def delete(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    await req.kube.delete(req.context.caller, constants.SERVERS, server.name, req.project)
    return reply(status=204)


# ----------------------------------------------------------------------------- metadata


def _metadata(server: Server) -> dict[str, str]:
    return dict(json.loads(names.annotations_of(server).get(names.METADATA) or "{}"))


async def _write_metadata(req: Req, server: Server, meta: dict[str, str]) -> None:
    if len(meta) > 128:
        raise Fault(403, "Quota exceeded for metadata_items: at most 128 items")
    for key, value in meta.items():
        if not isinstance(value, str) or not key or len(key) > 255 or len(value) > 255:
            raise Fault(400, "Invalid input for field/attribute metadata.")
    await req.kube.patch(
        req.context.caller,
        constants.SERVERS,
        server.name,
        {"metadata": {"annotations": {names.METADATA: json.dumps(meta)}}},
        req.project,
    )


async def _metadata_body(req: Req, key: str) -> Any:
    body = await req.body()
    if not isinstance(body, dict) or key not in body or not isinstance(body[key], dict):
        raise Fault(400, "Malformed request body")
    return body[key]


async def metadata_index(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    return reply({"metadata": _metadata(server)})


async def metadata_replace(req: Req) -> web.Response:
    meta = await _metadata_body(req, "metadata")
    server = await lookup.server(req, req.params["id"])
    await _write_metadata(req, server, meta)
    return reply({"metadata": meta})


async def metadata_merge(req: Req) -> web.Response:
    meta = await _metadata_body(req, "metadata")
    server = await lookup.server(req, req.params["id"])
    merged = {**_metadata(server), **meta}
    await _write_metadata(req, server, merged)
    return reply({"metadata": merged})


async def metadata_show(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    key = req.params["key"]
    meta = _metadata(server)
    if key not in meta:
        raise Fault(404, "Metadata item was not found")
    return reply({"meta": {key: meta[key]}})


async def metadata_put(req: Req) -> web.Response:
    item = await _metadata_body(req, "meta")
    key = req.params["key"]
    if list(item) != [key]:
        raise Fault(400, "Request body and URI mismatch")
    server = await lookup.server(req, req.params["id"])
    await _write_metadata(req, server, {**_metadata(server), **item})
    return reply({"meta": item})


async def metadata_delete(req: Req) -> web.Response:
    server = await lookup.server(req, req.params["id"])
    meta = _metadata(server)
    key = req.params["key"]
    if key not in meta:
        raise Fault(404, "Metadata item was not found")
    del meta[key]
    await _write_metadata(req, server, meta)
    return reply(status=204)
