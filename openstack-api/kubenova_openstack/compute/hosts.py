"""Hosts as Nova shows them, from Hypervisors: ``os-hypervisors`` (list, detail, show, with
their 2.28, 2.53 and 2.88 shapes), ``os-services`` (one ``nova-compute`` per host),
``os-availability-zone`` (+ detail) and ``limits``.

Ids: before 2.53 Nova's ids are integers (a stable number derived from the Hypervisor's
UID here); from 2.53 UUIDs (the Hypervisor's UID, and a UUID derived from it for its
service).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
import zlib
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import Server
from kubenova_openstack.compute import quotas, views
from kubenova_openstack.faults import Fault
from kubenova_openstack.web import Req, reply


def _int_id(uid: str) -> int:
    return zlib.crc32(uid.encode()) & 0x7FFFFFFF


def _service_uuid(uid: str) -> str:
    return str(uuid.uuid5(uuid.UUID(uid), "nova-compute"))


def _up(hv: dict[str, Any]) -> bool:
    for cond in (hv.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Up":
            return bool(cond.get("status") == "True")
    for cond in (hv.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _version(text: str | None) -> int:
    parts = [int(p) for p in (text or "0").split(".")[:3] if p.isdigit()]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


def _ids(req: Req, hv: dict[str, Any]) -> tuple[Any, Any]:
    uid = hv["metadata"]["uid"]
    if req.at_least("2.53"):
        return uid, _service_uuid(uid)
    return _int_id(uid), _int_id(_service_uuid(uid))


def _ip(address: str | None) -> str:
    """Nova's ``host_ip`` is an IP address: the host's migration address when it is one,
    else the loopback address (kubenova knows no other address of the host)."""
    try:
        return str(ipaddress.ip_address(address or ""))
    except ValueError:
        return "127.0.0.1"


def _basic(req: Req, hv: dict[str, Any]) -> dict[str, Any]:
    hid, _ = _ids(req, hv)
    spec = hv.get("spec") or {}
    return {
        "hypervisor_hostname": hv["metadata"]["name"],
        "id": hid,
        "state": "up" if _up(hv) else "down",
        "status": "disabled" if spec.get("disabled") else "enabled",
    }


def _detail(req: Req, hv: dict[str, Any]) -> dict[str, Any]:
    out = _basic(req, hv)
    spec, status = hv.get("spec") or {}, hv.get("status") or {}
    _, sid = _ids(req, hv)
    out["host_ip"] = _ip((status.get("migration") or {}).get("address"))
    out["hypervisor_type"] = status.get("hypervisorType") or "QEMU"
    out["hypervisor_version"] = _version(status.get("hypervisorVersion"))
    out["service"] = {
        "host": hv["metadata"]["name"],
        "id": sid,
        "disabled_reason": spec.get("disabledReason") if spec.get("disabled") else None,
    }
    if req.at_least("2.88"):
        out["uptime"] = _uptime(hv)
        return out
    total = status.get("total") or {}
    used = status.get("used") or {}
    free = status.get("free") or {}
    cpu = status.get("cpuInfo") or {}
    cpu_info = {
        "arch": cpu.get("arch", ""),
        "model": cpu.get("model", ""),
        "vendor": cpu.get("vendor", ""),
        "features": list(cpu.get("features") or []),
        "topology": {
            "cores": cpu.get("cores", 0),
            "threads": cpu.get("threads", 0),
            "sockets": cpu.get("sockets", 0),
        },
    }
    import json  # noqa: PLC0415

    out.update(
        {
            "cpu_info": cpu_info if req.at_least("2.28") else json.dumps(cpu_info),
            "current_workload": 0,
            "disk_available_least": int(free.get("diskGiB", 0)),
            "free_disk_gb": int(free.get("diskGiB", 0)),
            "free_ram_mb": int(free.get("memoryMiB", 0)),
            "local_gb": int(total.get("diskGiB", 0)),
            "local_gb_used": int(used.get("diskGiB", 0)),
            "memory_mb": int(total.get("memoryMiB", 0)),
            "memory_mb_used": int(used.get("memoryMiB", 0)),
            "running_vms": int(status.get("runningVMs", 0)),
            "vcpus": int(total.get("vcpus", 0)),
            "vcpus_used": int(used.get("vcpus", 0)),
        }
    )
    return out


async def _servers_by_host(req: Req) -> dict[str, list[dict[str, str]]]:
    items = await req.kube.objects(req.context.caller, Server)
    out: dict[str, list[dict[str, str]]] = {}
    for s in items:
        node = s.status.nodeName
        if node:
            out.setdefault(node, []).append({"name": s.status.domainName or "", "uuid": s.uid})
    return out


async def _hypervisors(req: Req) -> list[dict[str, Any]]:
    items = await req.kube.list(req.context.caller, constants.HYPERVISORS)
    return sorted(items, key=lambda h: h["metadata"]["name"])


async def _listing(req: Req, detail: bool) -> web.Response:
    hvs = await _hypervisors(req)
    pattern = req.query("hypervisor_hostname_pattern")
    if pattern and req.at_least("2.53"):
        hvs = _matching(hvs, pattern)
    marker = req.query("marker")
    if marker and req.at_least("2.33"):
        ids = [str(_ids(req, h)[0]) for h in hvs]
        if marker not in ids:
            raise Fault(400, f"marker [{marker}] not found")
        hvs = hvs[ids.index(marker) + 1 :]
    body: dict[str, Any] = {}
    limit = req.limit() if req.at_least("2.33") else None
    more = limit is not None and len(hvs) > limit
    if limit is not None:
        hvs = hvs[:limit]
    if more and hvs:
        path = "os-hypervisors/detail" if detail else "os-hypervisors"
        body["hypervisors_links"] = [
            {
                "href": f"{req.base}/{path}?limit={limit}&marker={_ids(req, hvs[-1])[0]}",
                "rel": "next",
            }
        ]
    shown = [_detail(req, h) if detail else _basic(req, h) for h in hvs]
    if req.query("with_servers") in ("true", "True", "1") and req.at_least("2.53"):
        servers = await _servers_by_host(req)
        for h, out in zip(hvs, shown, strict=True):
            found = servers.get(h["metadata"]["name"])
            if found or req.at_least("2.75"):
                out["servers"] = found or []
    return reply({"hypervisors": shown, **body})


async def hypervisors(req: Req) -> web.Response:
    return await _listing(req, detail=False)


async def hypervisors_detail(req: Req) -> web.Response:
    return await _listing(req, detail=True)


async def _by_id(req: Req) -> dict[str, Any]:
    """The Hypervisor the URL's ``{id}`` names (an integer before 2.53, a UUID from it)."""
    wanted = req.params["id"]
    for hv in await _hypervisors(req):
        if str(_ids(req, hv)[0]) == wanted:
            return hv
    if req.at_least("2.53"):
        try:
            uuid.UUID(wanted)
        except ValueError as exc:
            raise Fault(400, f"Invalid uuid {wanted}") from exc
    raise Fault(404, f"Hypervisor with ID {wanted} could not be found.")


async def hypervisor(req: Req) -> web.Response:
    hv = await _by_id(req)
    out = _detail(req, hv)
    if req.query("with_servers") in ("true", "True", "1") and req.at_least("2.53"):
        found = (await _servers_by_host(req)).get(hv["metadata"]["name"])
        if found or req.at_least("2.75"):
            out["servers"] = found or []
    return reply({"hypervisor": out})


def _uptime(hv: dict[str, Any], now: dt.datetime | None = None) -> str | None:
    """The host's uptime as ``uptime`` begins it (``21:04:05 up 3 days,  4:12``), from the
    boot time its agent reports; ``None`` before it reported one. kubenova does not gather
    the host's users and load average, which Nova's libvirt driver appends."""
    booted = (hv.get("status") or {}).get("bootTime")
    if not booted:
        return None
    now = now or dt.datetime.now(dt.UTC)
    minutes = max(0, int((now - dt.datetime.fromisoformat(booted)).total_seconds()) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    clock = f"{minutes // 60:2d}:{minutes % 60:02d}" if minutes >= 60 else f"{minutes} min"
    since = f"{days} day{'s' if days != 1 else ''}, {clock}" if days else clock
    return f"{now:%H:%M:%S} up {since}"


async def uptime(req: Req) -> web.Response:
    """``os-hypervisors/{id}/uptime`` (until 2.87; 2.88 shows ``uptime`` in the hypervisor):
    501 for a host whose agent has not reported its boot time, as Nova for a driver
    without it."""
    req.only_until("2.87")
    hv = await _by_id(req)
    up = _uptime(hv)
    if up is None:
        raise Fault(501, "Virt driver does not implement uptime function.")
    return reply({"hypervisor": {**_basic(req, hv), "uptime": up}})


#: What ``os-hypervisors/statistics`` sums over every host (of each host's detail).
STATISTICS = (
    "current_workload", "disk_available_least", "free_disk_gb", "free_ram_mb", "local_gb",
    "local_gb_used", "memory_mb", "memory_mb_used", "running_vms", "vcpus", "vcpus_used",
)  # fmt: skip


async def statistics(req: Req) -> web.Response:
    """``openstack hypervisor stats show``: every host's capacity and use, summed (up to
    2.87, as Nova)."""
    req.only_until("2.87")
    hvs = await _hypervisors(req)
    details = [_detail(req, h) for h in hvs]
    out = {key: sum(int(d[key]) for d in details) for key in STATISTICS}
    return reply({"hypervisor_statistics": {"count": len(hvs), **out}})


def _matching(hvs: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    """The hosts whose name contains ``pattern`` (Nova's search is a substring match, in
    ``?hypervisor_hostname_pattern`` as in the older ``{pattern}/search``); none is a 404."""
    found = [h for h in hvs if pattern in h["metadata"]["name"]]
    if not found:
        raise Fault(404, f"No hypervisor matching '{pattern}' could be found.")
    return found


async def search(req: Req) -> web.Response:
    """The hosts whose name contains a pattern (up to 2.52; then ``?hypervisor_hostname_pattern``
    of the list)."""
    req.only_until("2.52")
    found = _matching(await _hypervisors(req), req.params["pattern"])
    return reply({"hypervisors": [_basic(req, h) for h in found]})


async def servers_on(req: Req) -> web.Response:
    """The hosts whose name contains a pattern, each with its servers (up to 2.52; then
    ``?with_servers``)."""
    req.only_until("2.52")
    found = _matching(await _hypervisors(req), req.params["pattern"])
    servers = await _servers_by_host(req)
    out = []
    for hv in found:
        shown = _basic(req, hv)
        on = servers.get(hv["metadata"]["name"])
        if on:
            shown["servers"] = on
        out.append(shown)
    return reply({"hypervisors": out})


# ----------------------------------------------------------------------------- services


def _service(req: Req, hv: dict[str, Any]) -> dict[str, Any]:
    spec, status = hv.get("spec") or {}, hv.get("status") or {}
    _, sid = _ids(req, hv)
    out: dict[str, Any] = {
        "id": sid,
        "binary": "nova-compute",
        "disabled_reason": spec.get("disabledReason") if spec.get("disabled") else None,
        "host": hv["metadata"]["name"],
        "state": "up" if _up(hv) else "down",
        "status": "disabled" if spec.get("disabled") else "enabled",
        "updated_at": views.usage_time(status.get("lastHeartbeatTime")),
        "zone": spec.get("availabilityZone") or "nova",
    }
    if req.at_least("2.11"):
        out["forced_down"] = False
    return out


async def services(req: Req) -> web.Response:
    hvs = await _hypervisors(req)
    host, binary = req.query("host"), req.query("binary")
    shown = [
        _service(req, h)
        for h in hvs
        if (host is None or h["metadata"]["name"] == host) and binary in (None, "nova-compute")
    ]
    return reply({"services": shown})


# ----------------------------------------------------------------------------- zones


async def zones(req: Req) -> web.Response:
    hvs = await _hypervisors(req)
    found: dict[str, bool] = {}
    for h in hvs:
        zone = str((h.get("spec") or {}).get("availabilityZone") or "nova")
        usable = _up(h) and not (h.get("spec") or {}).get("disabled")
        found[zone] = found.get(zone, False) or usable
    shown = [
        {"zoneName": z, "zoneState": {"available": ok}, "hosts": None}
        for z, ok in sorted(found.items())
    ]
    return reply({"availabilityZoneInfo": shown})


async def zones_detail(req: Req) -> web.Response:
    hvs = await _hypervisors(req)
    by_zone: dict[str, dict[str, Any]] = {}
    for h in hvs:
        spec = h.get("spec") or {}
        zone = str(spec.get("availabilityZone") or "nova")
        entry = by_zone.setdefault(zone, {"available": False, "hosts": {}})
        up = _up(h)
        entry["available"] = entry["available"] or (up and not spec.get("disabled"))
        entry["hosts"][h["metadata"]["name"]] = {
            "nova-compute": {
                "active": not spec.get("disabled"),
                "available": up,
                "updated_at": views.usage_time((h.get("status") or {}).get("lastHeartbeatTime")),
            }
        }
    shown = [
        {"zoneName": z, "zoneState": {"available": e["available"]}, "hosts": e["hosts"]}
        for z, e in sorted(by_zone.items())
    ]
    return reply({"availabilityZoneInfo": shown})


# ----------------------------------------------------------------------------- limits


#: Nova's absolute limits that are quotas (:mod:`kubenova_openstack.compute.quotas`).
QUOTA_LIMITS = {
    "instances": "maxTotalInstances",
    "cores": "maxTotalCores",
    "ram": "maxTotalRAMSize",
    "server_groups": "maxServerGroups",
}


async def _quota_limits(req: Req) -> dict[str, int]:
    """The project's quotas as absolute limits; none readable (no right to read them) says
    nothing."""
    try:
        found = await quotas.limits_of(req, req.project)
    except Fault as exc:
        if exc.status != 403:
            raise
        return {}
    return {name: found[key] for key, name in QUOTA_LIMITS.items()}


async def limits(req: Req) -> web.Response:
    """Nova's absolute limits: the project's quotas (its ComputeQuotas, and ResourceQuotas
    where they count servers or server groups), -1 (unlimited) otherwise; the used figures are
    what the project's Servers take."""
    servers = await req.kube.objects(req.context.caller, Server, req.project)
    groups = await req.kube.list(req.context.caller, constants.SERVERGROUPS, req.project)
    quota = await _quota_limits(req)
    cores = sum(s.status.flavor.vcpus for s in servers if s.status.flavor is not None)
    ram = sum(s.status.flavor.memoryMiB for s in servers if s.status.flavor is not None)
    absolute: dict[str, Any] = {
        "maxImageMeta": 128,
        "maxPersonality": 5,
        "maxPersonalitySize": 10240,
        "maxSecurityGroupRules": -1,
        "maxSecurityGroups": -1,
        "maxServerMeta": 128,
        "maxTotalCores": -1,
        "maxTotalFloatingIps": -1,
        "maxTotalInstances": -1,
        "maxTotalKeypairs": -1,
        "maxTotalRAMSize": -1,
        "maxServerGroups": -1,
        "maxServerGroupMembers": -1,
        "totalCoresUsed": cores,
        "totalInstancesUsed": len(servers),
        "totalRAMUsed": ram,
        "totalSecurityGroupsUsed": 0,
        "totalFloatingIpsUsed": 0,
        "totalServerGroupsUsed": len(groups),
    }
    absolute.update(quota)
    if req.at_least("2.36"):
        for key in (
            "maxSecurityGroupRules",
            "maxSecurityGroups",
            "maxTotalFloatingIps",
            "totalSecurityGroupsUsed",
            "totalFloatingIpsUsed",
        ):
            del absolute[key]
    if req.at_least("2.39"):
        del absolute["maxImageMeta"]
    if req.at_least("2.57"):
        del absolute["maxPersonality"]
        del absolute["maxPersonalitySize"]
    return reply({"limits": {"absolute": absolute, "rate": []}})


# ----------------------------------------------------------------------------- aggregates


async def aggregates(req: Req) -> web.Response:
    """Nova's host aggregates that carry an availability zone: one per zone a Hypervisor
    names other than the default ``nova`` (kubenova has no other kind of aggregate)."""
    hvs = await _hypervisors(req)
    zones: dict[str, list[dict[str, Any]]] = {}
    for h in hvs:
        zone = str((h.get("spec") or {}).get("availabilityZone") or "nova")
        if zone != "nova":
            zones.setdefault(zone, []).append(h)
    shown = []
    for zone, members in sorted(zones.items()):
        first = min(members, key=lambda h: str(h["metadata"].get("creationTimestamp", "")))
        created = views.usage_time(first["metadata"].get("creationTimestamp"))
        out: dict[str, Any] = {
            "availability_zone": zone,
            "created_at": created,
            "deleted": False,
            "deleted_at": None,
            "hosts": sorted(h["metadata"]["name"] for h in members),
            "id": _int_id(zone),
            "metadata": {"availability_zone": zone},
            "name": zone,
            "updated_at": None,
        }
        if req.at_least("2.41"):
            out["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubenova-zone:{zone}"))
        shown.append(out)
    return reply({"aggregates": shown})
