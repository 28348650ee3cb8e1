"""Servers and flavors as the Compute API reference shows them at each microversion.

Every field is the reference's; what depends on the microversion is added where Nova adds
it (2.3 more extended attributes, 2.9 locked, 2.16 host_status, 2.19 description, 2.26 tags,
2.47 the embedded flavor, 2.55 flavor descriptions, 2.61 flavor extra specs, 2.63 trusted
certificates, 2.71 server groups on show, 2.73 locked_reason, 2.75 swap 0), and what Nova's
default policy keeps for administrators (``OS-EXT-SRV-ATTR:*``, ``host_status``) only for a
caller whose RBAC makes them one (:func:`kubenova_openstack.auth.roles`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

from kubenova_api.resources import Phase, Server, ServerStatus
from kubenova_openstack import names
from kubenova_openstack.compute import state
from kubenova_openstack.web import Req

PROGRESS_STATUSES = ("ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING")


def host_url(req: Req) -> str:
    return req.settings.base_url


def links(req: Req, collection: str, ident: str) -> list[dict[str, str]]:
    return [
        {"href": f"{req.base}/{collection}/{ident}", "rel": "self"},
        {"href": f"{host_url(req)}/{collection}/{ident}", "rel": "bookmark"},
    ]


def bookmark(req: Req, collection: str, ident: str) -> list[dict[str, str]]:
    return [{"href": f"{host_url(req)}/{collection}/{ident}", "rel": "bookmark"}]


def nova_time(value: str | None) -> str | None:
    """Kubernetes' RFC 3339 (``…Z``) as Nova's ``isotime`` (also ``…Z``, no fraction)."""
    if not value:
        return None
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def usage_time(value: str | None) -> str | None:
    """``OS-SRV-USG:*`` times: a naive timestamp with microseconds, as Nova prints them."""
    if not value:
        return None
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)
    return when.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f")


# ----------------------------------------------------------------------------- flavors


def flavor_resources(flavor: dict[str, Any]) -> dict[str, Any]:
    spec = flavor.get("spec") or {}
    return {
        "vcpus": int(spec.get("vcpus", 1)),
        "ram": int(spec.get("memoryMiB", 0)),
        "disk": int(spec.get("diskGiB", 0)),
    }


def flavor_basic(req: Req, flavor: dict[str, Any]) -> dict[str, Any]:
    fid = names.flavor_id(flavor)
    out: dict[str, Any] = {
        "id": fid,
        "name": names.display_name(flavor),
        "links": links(req, "flavors", fid),
    }
    if req.at_least("2.55"):
        out["description"] = names.annotations_of(flavor).get(names.DESCRIPTION)
    return out


def flavor_detail(req: Req, flavor: dict[str, Any], extra_specs: bool = True) -> dict[str, Any]:
    fid = names.flavor_id(flavor)
    res = flavor_resources(flavor)
    out: dict[str, Any] = {
        "id": fid,
        "name": names.display_name(flavor),
        "ram": res["ram"],
        "disk": res["disk"],
        "swap": 0 if req.at_least("2.75") else "",
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "OS-FLV-DISABLED:disabled": False,
        "vcpus": res["vcpus"],
        "os-flavor-access:is_public": True,
        "rxtx_factor": 1.0,
        "links": links(req, "flavors", fid),
    }
    if req.at_least("2.55"):
        out["description"] = names.annotations_of(flavor).get(names.DESCRIPTION)
    if req.at_least("2.61") and extra_specs:
        out["extra_specs"] = dict((flavor.get("spec") or {}).get("extraSpecs") or {})
    return out


# ----------------------------------------------------------------------------- servers


@dataclasses.dataclass
class Lookups:
    """What server views need besides the Server: flavors and images by name, hosts, and
    whether the caller is an administrator. Read once per request."""

    flavors: dict[str, dict[str, Any]]
    images: dict[str, dict[str, Any]]
    hypervisors: dict[str, dict[str, Any]] | None
    admin: bool
    groups: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    verify_resize: set[str] = dataclasses.field(default_factory=set)
    """UIDs of Servers whose resize or cold migration waits for confirmation."""
    migrating: dict[str, str] = dataclasses.field(default_factory=dict)
    """UIDs of Servers that a ServerMigration is moving now, with Nova's task state."""
    resize_failed: set[str] = dataclasses.field(default_factory=set)
    """UIDs of Servers whose flavorRef names a flavor the controller failed to resize to."""


def host_id(project: str, host: str | None) -> str:
    if not host:
        return ""
    return hashlib.sha224((project + host).encode()).hexdigest()


def _iso(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else ""


def created(server: Server) -> str:
    """When the Server was made, as RFC 3339 (sorts as text)."""
    return _iso(server.metadata.creationTimestamp)


def updated(server: Server) -> str:
    """The last change Nova would show: the newest condition transition, else creation."""
    times = [c.lastTransitionTime for c in server.status.conditions if c.lastTransitionTime]
    return max([_iso(t) for t in times] + [created(server)])


def _zone(server: Server, look: Lookups) -> str:
    node = server.status.nodeName
    if node and look.hypervisors is not None and node in look.hypervisors:
        return str((look.hypervisors[node].get("spec") or {}).get("availabilityZone") or "nova")
    return str(server.spec.availabilityZone or ("nova" if node else ""))


def _host_status(server: Server, look: Lookups) -> str:
    node = server.status.nodeName
    if not node or look.hypervisors is None or node not in look.hypervisors:
        return ""
    hv = look.hypervisors[node]
    if (hv.get("spec") or {}).get("disabled"):
        return "MAINTENANCE"
    for cond in (hv.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Up":
            return "UP" if cond.get("status") == "True" else "DOWN"
    return "UP"


def _embedded_flavor(req: Req, server: Server, look: Lookups) -> dict[str, Any]:
    snapshot = server.status.flavor
    name = (snapshot.name if snapshot is not None else None) or server.spec.flavorRef
    flavor = look.flavors.get(name)
    if not req.at_least("2.47"):
        fid = names.flavor_id(flavor) if flavor else name
        return {"id": fid, "links": bookmark(req, "flavors", fid)}
    res = flavor_resources(flavor) if flavor else {"vcpus": 0, "ram": 0, "disk": 0}
    if snapshot is not None:
        res = {"vcpus": snapshot.vcpus, "ram": snapshot.memoryMiB, "disk": snapshot.diskGiB}
    return {
        "vcpus": res["vcpus"],
        "ram": res["ram"],
        "disk": res["disk"],
        "ephemeral": 0,
        "swap": 0,
        "original_name": names.display_name(flavor) if flavor else name,
        "extra_specs": dict(((flavor or {}).get("spec") or {}).get("extraSpecs") or {}),
    }


def server_basic(req: Req, server: Server) -> dict[str, Any]:
    uid = server.uid
    return {"id": uid, "name": names.display_name(server), "links": links(req, "servers", uid)}


def addresses(status: ServerStatus) -> dict[str, list[dict[str, Any]]]:
    """Nova's ``addresses``: per network, in NIC order, its fixed IPv4 addresses and MACs
    (from ``status.addresses``, given by the controller with the binding)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for address in status.addresses:
        out.setdefault(address.network, []).append(
            {
                "version": 4,
                "addr": address.ip,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": address.mac,
            }
        )
    return out


def nova_state(server: Server, look: Lookups) -> state.NovaState:
    """The server's Nova state, with what the project's ServerMigrations say of it."""
    uid = server.uid
    nova = state.of(server, uid in look.verify_resize)
    if uid in look.migrating and nova.status != "ERROR" and nova.task_state != "deleting":
        task = look.migrating[uid]
        shown = "MIGRATING" if task == "migrating" else "RESIZE"
        nova = state.NovaState(shown, nova.vm_state, task, nova.power_state)
    elif uid in look.resize_failed and nova.task_state == "resize_prep":
        # Not under way: it failed (the Server's ResizeFailed Event says why).
        shown = state.no_task_status(server.status.phase or Phase.BUILD)
        nova = state.NovaState(shown, nova.vm_state, None, nova.power_state)
    return nova


def server_detail(
    req: Req, server: Server, look: Lookups, *, show_groups: bool = False
) -> dict[str, Any]:
    """Nova's detailed server: ``GET /servers/{id}`` (``show_groups``), ``/servers/detail``."""
    meta, spec, status = server.metadata, server.spec, server.status
    uid, project = meta.uid, meta.namespace or ""
    ann = meta.annotations
    node = status.nodeName
    image = look.images.get(spec.imageRef)
    image_id = image["metadata"]["uid"] if image else spec.imageRef
    nova = nova_state(server, look)
    out: dict[str, Any] = {
        "accessIPv4": ann.get(names.ACCESS_IPV4) or "",
        "accessIPv6": ann.get(names.ACCESS_IPV6) or "",
        "addresses": addresses(status),
        "created": nova_time(created(server)),
        "flavor": _embedded_flavor(req, server, look),
        "hostId": host_id(project, node),
        "id": uid,
        "image": {"id": image_id, "links": bookmark(req, "images", image_id)},
        "links": links(req, "servers", uid),
        "metadata": json.loads(ann.get(names.METADATA) or "{}"),
        "name": names.display_name(server),
        "status": nova.status,
        "tenant_id": project,
        "user_id": ann.get(names.USER_ID, ""),
        "updated": nova_time(updated(server)),
        "OS-DCF:diskConfig": "MANUAL",
    }
    if nova.status in ("ERROR", "DELETED"):
        why = state.fault(server)
        if why is not None:
            message, details, when = why
            fault: dict[str, Any] = {
                "code": 500,
                "created": nova_time(when) or out["updated"],
                "message": message,
            }
            if look.admin:
                fault["details"] = details
            out["fault"] = fault
    if nova.status in PROGRESS_STATUSES:
        out["progress"] = 0
    out["OS-EXT-AZ:availability_zone"] = _zone(server, look)
    out["config_drive"] = "True"
    out["key_name"] = ann.get(names.KEY_NAME)
    out["OS-SRV-USG:launched_at"] = usage_time(
        status.launchedAt.isoformat() if status.launchedAt else None
    )
    out["OS-SRV-USG:terminated_at"] = None
    if look.admin:
        out["OS-EXT-SRV-ATTR:host"] = node
        out["OS-EXT-SRV-ATTR:instance_name"] = status.domainName or ""
        out["OS-EXT-SRV-ATTR:hypervisor_hostname"] = node
        if req.at_least("2.3"):
            user_data = spec.userData
            out["OS-EXT-SRV-ATTR:hostname"] = meta.name
            out["OS-EXT-SRV-ATTR:kernel_id"] = ""
            out["OS-EXT-SRV-ATTR:launch_index"] = int(ann.get(names.LAUNCH_INDEX, "0"))
            out["OS-EXT-SRV-ATTR:ramdisk_id"] = ""
            out["OS-EXT-SRV-ATTR:reservation_id"] = ann.get(names.RESERVATION, "")
            out["OS-EXT-SRV-ATTR:root_device_name"] = "/dev/vda"
            out["OS-EXT-SRV-ATTR:user_data"] = (
                base64.b64encode(user_data.encode()).decode() if user_data else None
            )
    out["OS-EXT-STS:task_state"] = nova.task_state
    out["OS-EXT-STS:vm_state"] = nova.vm_state
    out["OS-EXT-STS:power_state"] = nova.power_state
    out["os-extended-volumes:volumes_attached"] = []
    if req.at_least("2.9"):
        out["locked"] = False
    if req.at_least("2.16") and look.admin:
        out["host_status"] = _host_status(server, look)
    if req.at_least("2.19"):
        out["description"] = ann.get(names.DESCRIPTION)
    if req.at_least("2.26"):
        out["tags"] = []
    if req.at_least("2.63"):
        out["trusted_image_certificates"] = None
    if show_groups and req.at_least("2.71"):
        group = spec.serverGroupRef
        found = look.groups.get(group) if group else None
        out["server_groups"] = [found["metadata"]["uid"]] if found else []
    if req.at_least("2.73"):
        out["locked_reason"] = None
    return out
