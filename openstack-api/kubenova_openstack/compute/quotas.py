"""``/os-quota-sets``: a project's quotas as Nova shows and sets them, over its ComputeQuotas.

A project (namespace) may hold several ComputeQuotas; all apply, so a limit shown is the
smallest of them (and of a ResourceQuota that counts its Servers or server groups). Nova's
``instances``, ``cores`` and ``ram`` are ComputeQuota's ``servers``, ``vcpus`` and
``memoryMiB``; the controller counts them when it binds a Server. An administrator's ``quota
set`` writes the ComputeQuota ``openstack`` of the project and ``quota delete`` removes it;
ComputeQuotas made otherwise (kubectl, GitOps) are left as they are. What kubenova does not
limit is ``-1`` (unlimited), or the fixed limit it has (metadata items, injected files), and
asking to set it is a 400: a quota that is accepted must be one that holds.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import ComputeQuota, Server
from kubenova_openstack.compute import bodies, keypairs
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req, reply

#: The ComputeQuota ``quota set`` writes in a project.
NAME = "openstack"
#: Nova's quota -> the ComputeQuota field that holds it.
SETTABLE = {"instances": "servers", "cores": "vcpus", "ram": "memoryMiB"}
#: Limits kubenova has that no quota changes (as Nova's defaults).
FIXED = {
    "metadata_items": 128,
    "injected_files": 5,
    "injected_file_content_bytes": 10240,
    "injected_file_path_bytes": 255,
}
#: Quotas Nova shows up to a microversion (the network proxies to 2.35, files to 2.56).
UNTIL = {
    "fixed_ips": "2.35",
    "floating_ips": "2.35",
    "security_group_rules": "2.35",
    "security_groups": "2.35",
    "injected_file_content_bytes": "2.56",
    "injected_file_path_bytes": "2.56",
    "injected_files": "2.56",
}
KEYS = (
    "cores", "fixed_ips", "floating_ips", "injected_file_content_bytes",
    "injected_file_path_bytes", "injected_files", "instances", "key_pairs", "metadata_items",
    "ram", "security_group_rules", "security_groups", "server_group_members", "server_groups",
)  # fmt: skip
#: ResourceQuota ``hard`` keys that limit what Nova calls instances and server_groups.
RESOURCE_QUOTAS = {
    f"count/{constants.SERVERS}.{constants.GROUP}": "instances",
    f"count/{constants.SERVERGROUPS}.{constants.GROUP}": "server_groups",
}


#: A project id is a namespace's name.
PROJECT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _project(req: Req) -> str:
    project = req.params["tenant_id"]
    if not PROJECT.match(project):
        raise Fault(400, f"Invalid project id {project!r}: a project is a namespace's name")
    return project


def _shown(req: Req) -> list[str]:
    out = []
    for key in KEYS:
        last = UNTIL.get(key)
        if last is None or req.at_most(last):
            out.append(key)
    return out


async def _quotas(req: Req, project: str) -> list[ComputeQuota]:
    try:
        items = await req.kube.list(req.context.caller, constants.COMPUTEQUOTAS, project)
    except KubeError as exc:
        if exc.status == 403:
            raise Fault(403, f"Policy doesn't allow reading the quotas of {project}") from exc
        raise
    return [ComputeQuota.parse(i) for i in items]


async def limits_of(req: Req, project: str) -> dict[str, int]:
    """Every quota of ``project``: the smallest limit that holds, -1 where none does."""
    quotas, resource_quotas = await asyncio.gather(
        _quotas(req, project),
        req.kube.list_readable(req.context.caller, "resourcequotas", project, core=True),
    )
    out = {key: -1 for key in KEYS} | FIXED

    def lower(key: str, value: int) -> None:
        out[key] = value if out[key] < 0 else min(out[key], value)

    for quota in quotas:
        for key, field in SETTABLE.items():
            value = getattr(quota.spec, field)
            if value is not None:
                lower(key, value)
    for rq in resource_quotas:
        for hard, amount in ((rq.get("spec") or {}).get("hard") or {}).items():
            counted = RESOURCE_QUOTAS.get(hard)
            if counted is not None and str(amount).isdigit():
                lower(counted, int(amount))
    return out


async def used_by(req: Req, project: str) -> dict[str, int]:
    """What ``project`` holds now, counted as the controller counts quotas (Servers bound to a
    host, with the flavor they were bound with)."""
    servers, groups, pairs = await asyncio.gather(
        req.kube.objects(req.context.caller, Server, project),
        req.kube.list_readable(req.context.caller, constants.SERVERGROUPS, project),
        req.kube.list_readable(req.context.caller, "secrets", project, core=True),
    )
    bound = [s for s in servers if s.status.nodeName and s.status.flavor is not None]
    out = {key: 0 for key in KEYS}
    out["instances"] = len(bound)
    out["cores"] = sum(s.status.flavor.vcpus for s in bound if s.status.flavor)
    out["ram"] = sum(s.status.flavor.memoryMiB for s in bound if s.status.flavor)
    out["server_groups"] = len(groups)
    out["key_pairs"] = sum(1 for p in pairs if p.get("type") == keypairs.SECRET_TYPE)
    return out


async def room_for(req: Req, flavor: dict[str, Any], least: int, most: int) -> int:
    """How many servers of ``flavor`` a create may make (``least`` to ``most``), as Nova
    checks quotas before it makes any: a 403 when not even ``least`` fit. Counted against
    every Server of the project (bound or not, as Nova counts instances); the controller
    checks again when it binds, so two creates at once cannot both overshoot for good. A
    caller who may not read the quotas is left to the controller."""
    project = req.project
    try:
        limits = await limits_of(req, project)
    except Fault as exc:
        if exc.status == 403:
            return most
        raise
    if all(limits[k] < 0 for k in SETTABLE):
        return most
    servers = [
        s
        for s in await req.kube.objects(req.context.caller, Server, project)
        if not s.metadata.deleting
    ]
    spec = flavor.get("spec") or {}
    each = {
        "instances": 1,
        "cores": int(spec.get("vcpus", 1)),
        "ram": int(spec.get("memoryMiB", 0)),
    }
    used = {
        "instances": len(servers),
        "cores": sum(s.status.flavor.vcpus if s.status.flavor else 1 for s in servers),
        "ram": sum(s.status.flavor.memoryMiB if s.status.flavor else 0 for s in servers),
    }
    fits = most
    for key in SETTABLE:
        if limits[key] >= 0 and each[key] > 0:
            fits = min(fits, (limits[key] - used[key]) // each[key])
    if fits < least:
        over = [k for k in SETTABLE if limits[k] >= 0 and used[k] + least * each[k] > limits[k]]
        key = over[0]
        raise Fault(
            403, f"Quota exceeded for {key}: Requested {least * each[key]}, but already used "
            f"{used[key]} of {limits[key]} {key}"
        )  # fmt: skip
    return fits


async def show(req: Req) -> web.Response:
    project = _project(req)
    limits = await limits_of(req, project)
    return reply({"quota_set": {"id": project, **{k: limits[k] for k in _shown(req)}}})


async def detail(req: Req) -> web.Response:
    project = _project(req)
    limits, used = await asyncio.gather(limits_of(req, project), used_by(req, project))
    shown = {k: {"limit": limits[k], "in_use": used[k], "reserved": 0} for k in _shown(req)}
    return reply({"quota_set": {"id": project, **shown}})


async def defaults(req: Req) -> web.Response:
    project = _project(req)
    out = {key: -1 for key in KEYS} | FIXED
    return reply({"quota_set": {"id": project, **{k: out[k] for k in _shown(req)}}})


async def update(req: Req) -> web.Response:
    """``quota set``: instances, cores and ram into the project's ComputeQuota ``openstack``
    (-1: no limit); any other quota kubenova cannot hold is a 400, unless it asks for what
    already is."""
    project = _project(req)
    shown = _shown(req)
    asked = bodies.quota_set(await req.body(), shown)
    current = await limits_of(req, project)
    spec: dict[str, int | None] = {}
    for key, number in asked.items():
        if key in SETTABLE:
            spec[SETTABLE[key]] = None if number == -1 else number
        elif number != current[key]:
            raise Fault(
                400, f"kubenova cannot limit {key}: only instances, cores and ram are quotas "
                f"it holds ({key} is {current[key]})"
            )  # fmt: skip
    if spec:
        await _write(req, project, spec)
    limits = await limits_of(req, project)
    return reply({"quota_set": {k: limits[k] for k in shown}})


async def _write(req: Req, project: str, spec: dict[str, int | None]) -> None:
    caller = req.context.caller
    found = await req.kube.get_or_none(caller, constants.COMPUTEQUOTAS, NAME, project)
    if found is None:
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": ComputeQuota.KIND,
            "metadata": {"name": NAME, "namespace": project},
            "spec": {k: v for k, v in spec.items() if v is not None},
        }
        await req.kube.create(caller, constants.COMPUTEQUOTAS, body, project)
    else:
        await req.kube.patch(caller, constants.COMPUTEQUOTAS, NAME, {"spec": spec}, project)


async def delete(req: Req) -> web.Response:
    """``quota delete``: the project's quotas back to the defaults, as far as the facade set
    them (its ComputeQuota ``openstack`` is removed)."""
    project = _project(req)
    try:
        await req.kube.delete(req.context.caller, constants.COMPUTEQUOTAS, NAME, project)
    except KubeError as exc:
        if exc.status != 404:
            raise
    return reply(status=202)
