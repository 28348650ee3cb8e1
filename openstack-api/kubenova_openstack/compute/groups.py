"""``/os-server-groups`` over ServerGroups: list, show, create, delete. A group's id is its
UID; its Nova name (free text) is an annotation; its members are the project's Servers that
name it. The ``max_server_per_host`` rule (2.64) has no kubenova equivalent and is refused."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import Server
from kubenova_openstack import names
from kubenova_openstack.faults import Fault
from kubenova_openstack.web import Req, reply

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


def _view(req: Req, group: dict[str, Any], servers: list[Server]) -> dict[str, Any]:
    name = group["metadata"]["name"]
    policy = str((group.get("spec") or {}).get("policy"))
    members = [s.uid for s in servers if s.spec.serverGroupRef == name]
    out: dict[str, Any] = {
        "id": group["metadata"]["uid"],
        "name": names.display_name(group),
    }
    if req.at_least("2.64"):
        out["policy"] = policy
        out["rules"] = {}
    else:
        out["policies"] = [policy]
    out["members"] = members
    if not req.at_least("2.64"):
        out["metadata"] = {}
    if req.at_least("2.13"):
        out["project_id"] = group["metadata"]["namespace"]
        out["user_id"] = names.annotations_of(group).get(names.USER_ID, "")
    return out


async def _all(req: Req) -> tuple[list[dict[str, Any]], list[Server]]:
    kube, caller, ns = req.kube, req.context.caller, req.project
    groups = await kube.list(caller, constants.SERVERGROUPS, ns)
    servers = await kube.objects(caller, Server, ns)
    return groups, servers


async def index(req: Req) -> web.Response:
    groups, servers = await _all(req)
    shown = [_view(req, g, servers) for g in sorted(groups, key=lambda g: g["metadata"]["name"])]
    return reply({"server_groups": shown})


async def _find(req: Req, groups: list[dict[str, Any]]) -> dict[str, Any]:
    for group in groups:
        if group["metadata"]["uid"] == req.params["id"]:
            return group
    raise Fault(404, f"Server group {req.params['id']} could not be found.")


async def show(req: Req) -> web.Response:
    groups, servers = await _all(req)
    return reply({"server_group": _view(req, await _find(req, groups), servers)})


async def create(req: Req) -> web.Response:
    body = await req.body()
    spec = (body or {}).get("server_group") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise Fault(400, "Invalid input for field/attribute server_group.")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise Fault(400, "Invalid input for field/attribute name.")
    if req.at_least("2.64"):
        policy = spec.get("policy")
        if spec.get("rules"):
            raise Fault(400, "kubenova server groups take no rules (max_server_per_host)")
    else:
        policies = spec.get("policies") or []
        policy = policies[0] if isinstance(policies, list) and len(policies) == 1 else None
    allowed = POLICIES if req.at_least("2.15") else POLICIES[:2]
    if policy not in allowed:
        raise Fault(400, f"Invalid input for field/attribute policy: {policy!r}")
    obj = {
        "apiVersion": constants.API_VERSION,
        "kind": "ServerGroup",
        "metadata": {
            "generateName": names.slug(name, "group") + "-",
            "namespace": req.project,
            "annotations": {names.DISPLAY_NAME: name, names.USER_ID: req.context.user_id},
        },
        "spec": {"policy": policy},
    }
    made = await req.kube.create(req.context.caller, constants.SERVERGROUPS, obj, req.project)
    return reply({"server_group": _view(req, made, [])})


async def delete(req: Req) -> web.Response:
    groups, _ = await _all(req)
    group = await _find(req, groups)
    await req.kube.delete(
        req.context.caller, constants.SERVERGROUPS, group["metadata"]["name"], req.project
    )
    return reply(status=204)
