"""``/flavors``: list, detail, show, create (with an id such as ``"1"``, or none: a UUID is
made), delete, and ``os-extra_specs`` — over cluster-scoped Flavors.

A Flavor's Nova id lives on the object (label and annotation ``compute.kubenova.io/flavor-id``)
so it stays the same across restarts of the facade; a Flavor made with kubectl has its name as
its id. Its Nova name, when it is not a valid Kubernetes name, is an annotation, and the object
gets a generated name.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_openstack import lookup, names
from kubenova_openstack.compute import views
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req, reply

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NOVA_NAME = re.compile(r"^(?! )[a-zA-Z0-9. _-]+(?<! )$")
NOVA_ID = re.compile(r"^(?! )[a-zA-Z0-9. _-]+(?<! )$")


def _sorted(req: Req, flavors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = req.query("sort_key") or "flavorid"
    desc = (req.query("sort_dir") or "asc") == "desc"

    def order(f: dict[str, Any]) -> tuple[Any, ...]:
        res = views.flavor_resources(f)
        if key in ("memory_mb", "ram"):
            return (res["ram"], names.flavor_id(f))
        if key == "vcpus":
            return (res["vcpus"], names.flavor_id(f))
        if key in ("root_gb", "disk"):
            return (res["disk"], names.flavor_id(f))
        if key == "name":
            return (names.display_name(f),)
        return (names.flavor_id(f),)

    return sorted(flavors, key=order, reverse=desc)


def _filtered(req: Req, flavors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = flavors
    for key, field in (("minRam", "ram"), ("minDisk", "disk")):
        value = req.query(key)
        if value is not None:
            try:
                least = int(value)
            except ValueError as exc:
                raise Fault(400, f"Invalid {key} filter [{value}]") from exc
            out = [f for f in out if views.flavor_resources(f)[field] >= least]
    is_public = req.query("is_public")
    if is_public is not None and is_public.lower() in ("false", "0", "no"):
        out = []  # every kubenova flavor is public
    marker = req.query("marker")
    if marker:
        ids = [names.flavor_id(f) for f in out]
        if marker not in ids:
            raise Fault(400, f"marker [{marker}] not found")
        out = out[ids.index(marker) + 1 :]
    limit = req.limit()
    if limit is not None:
        out = out[:limit]
    return out


async def index(req: Req) -> web.Response:
    flavors = _filtered(req, _sorted(req, await lookup.flavors(req)))
    return reply({"flavors": [views.flavor_basic(req, f) for f in flavors]})


async def detail(req: Req) -> web.Response:
    flavors = _filtered(req, _sorted(req, await lookup.flavors(req)))
    return reply({"flavors": [views.flavor_detail(req, f) for f in flavors]})


async def show(req: Req) -> web.Response:
    flavor = await lookup.flavor(req, req.params["id"])
    return reply({"flavor": views.flavor_detail(req, flavor)})


def _int(body: dict[str, Any], key: str, least: int, default: int | None = None) -> int:
    value = body.get(key, default)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise Fault(400, f"Invalid input for field/attribute {key}.") from exc
    if number < least or (isinstance(value, str) and not value.strip().isdigit()):
        raise Fault(400, f"Invalid input for field/attribute {key}.")
    return number


async def create(req: Req) -> web.Response:
    body = await req.body()
    spec = (body or {}).get("flavor") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise Fault(400, "Invalid input for field/attribute flavor.")
    name = spec.get("name")
    if not isinstance(name, str) or not NOVA_NAME.match(name) or len(name) > 255:
        raise Fault(400, "Invalid input for field/attribute name.")
    vcpus = _int(spec, "vcpus", 1)
    ram = _int(spec, "ram", 1)
    disk = _int(spec, "disk", 0)
    if _int(spec, "OS-FLV-EXT-DATA:ephemeral", 0, 0) or _int(spec, "swap", 0, 0):
        raise Fault(400, "kubenova flavors have one root disk: ephemeral and swap must be 0")
    if ram < 16:
        raise Fault(400, "Invalid input for field/attribute ram: kubenova needs at least 16 MiB")
    flavor_id = spec.get("id")
    if flavor_id in (None, "auto"):
        flavor_id = str(uuid.uuid4())
    flavor_id = str(flavor_id)
    if not NOVA_ID.match(flavor_id) or len(flavor_id) > 63 or " " in flavor_id:
        raise Fault(400, "Invalid input for field/attribute id.")
    existing = await lookup.flavors(req)
    if any(names.flavor_id(f) == flavor_id for f in existing):
        raise Fault(409, f"Flavor with ID {flavor_id} already exists.")
    if any(names.display_name(f) == name for f in existing):
        raise Fault(409, f"Flavor with name {name} already exists.")
    k8s_name = name if DNS_SUBDOMAIN.match(name) and len(name) <= 253 else names.generated(name)
    annotations = {names.FLAVOR_ID: flavor_id, names.DISPLAY_NAME: name}
    if req.at_least("2.55") and spec.get("description") is not None:
        annotations[names.DESCRIPTION] = str(spec["description"])
    obj = {
        "apiVersion": constants.API_VERSION,
        "kind": "Flavor",
        "metadata": {
            "name": k8s_name,
            "labels": {names.FLAVOR_ID: flavor_id},
            "annotations": annotations,
        },
        "spec": {"vcpus": vcpus, "memoryMiB": ram, "diskGiB": disk},
    }
    try:
        made = await req.kube.create(req.context.caller, constants.FLAVORS, obj)
    except KubeError as exc:
        if exc.status == 409:
            raise Fault(409, f"Flavor with name {name} already exists.") from exc
        raise
    return reply({"flavor": views.flavor_detail(req, made)})


async def delete(req: Req) -> web.Response:
    flavor = await lookup.flavor(req, req.params["id"])
    await req.kube.delete(req.context.caller, constants.FLAVORS, flavor["metadata"]["name"])
    return reply(status=202)


async def extra_specs(req: Req) -> web.Response:
    flavor = await lookup.flavor(req, req.params["id"])
    return reply({"extra_specs": dict((flavor.get("spec") or {}).get("extraSpecs") or {})})


async def extra_spec(req: Req) -> web.Response:
    flavor = await lookup.flavor(req, req.params["id"])
    specs = dict((flavor.get("spec") or {}).get("extraSpecs") or {})
    key = req.params["key"]
    if key not in specs:
        raise Fault(404, f"Flavor {req.params['id']} has no extra specs with key {key}.")
    return reply({key: specs[key]})


async def _extra_specs_body(req: Req) -> dict[str, str]:
    body = await req.body()
    specs: Any
    if req.http.method == "PUT":
        key = req.params["key"]
        if not isinstance(body, dict) or list(body) != [key]:
            raise Fault(400, "Request body and URI mismatch")
        specs = body
    else:
        specs = (body or {}).get("extra_specs") if isinstance(body, dict) else None
        if not isinstance(specs, dict):
            raise Fault(400, "Invalid input for field/attribute extra_specs.")
    for key, value in specs.items():
        if not isinstance(key, str) or not key or len(key) > 255:
            raise Fault(400, "Invalid input for field/attribute extra_specs.")
        if not isinstance(value, (str, int, float, bool)) or len(str(value)) > 255:
            raise Fault(400, f"Invalid input for field/attribute extra_specs.{key}.")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in specs.items()}


async def extra_specs_change(req: Req) -> web.Response:
    """A kubenova Flavor is immutable (a running Server's size and hints must not change
    under it). A flavor no Server uses yet — ``openstack flavor create --property`` sets its
    extra specs right after creating it — is made again with them, under the same name and
    id; one in use is refused (409): make a new flavor instead."""
    flavor = await lookup.flavor(req, req.params["id"])
    name = flavor["metadata"]["name"]
    specs = dict((flavor.get("spec") or {}).get("extraSpecs") or {})
    if req.http.method == "DELETE":
        key = req.params["key"]
        if key not in specs:
            raise Fault(404, f"Flavor {req.params['id']} has no extra specs with key {key}.")
        del specs[key]
        changes: dict[str, str] = {}
    else:
        changes = await _extra_specs_body(req)
        specs.update(changes)
    try:
        servers = await req.kube.list(req.context.caller, constants.SERVERS)
    except KubeError as exc:
        if exc.status != 403:
            raise
        raise Fault(403, "Policy doesn't allow changing a flavor's extra specs") from exc
    users = [s for s in servers if (s.get("spec") or {}).get("flavorRef") == name]
    if users:
        raise Fault(
            409,
            f"kubenova Flavors are immutable and {len(users)} server(s) use this one: create "
            "a new flavor with the extra specs (kubectl: spec.extraSpecs) instead",
        )
    meta = flavor["metadata"]
    again = {
        "apiVersion": constants.API_VERSION,
        "kind": "Flavor",
        "metadata": {
            "name": name,
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k != "kubectl.kubernetes.io/last-applied-configuration"
            },
        },
        "spec": {**(flavor.get("spec") or {}), "extraSpecs": specs},
    }
    await req.kube.delete(req.context.caller, constants.FLAVORS, name)
    await req.kube.create(req.context.caller, constants.FLAVORS, again)
    if req.http.method == "DELETE":
        return reply(status=200)
    return reply(changes if req.http.method == "PUT" else {"extra_specs": changes})
