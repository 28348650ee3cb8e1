"""Image v2 (Glance), the part the CLI and Nova clients use: list (filters ``name``,
``id=in:…``, ``status``, ``visibility``, ``disk_format``, and any image property;
``limit``/``marker`` paging), show and delete, over kubenova's cluster-scoped Images. An
image's id is the Image's UID; the Image's ``properties`` (Nova's names: ``hw_firmware_type``,
``hw_machine_type``, …) are the image's additional properties, top-level keys of its
document as Glance shows them.

Images are public (cluster-scoped, readable by whoever RBAC lets read them); their bits are
fetched by the agents from the Image's URLs, so there is no upload here.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_api.resources import ImageProperties
from kubenova_openstack import lookup, names
from kubenova_openstack.faults import Fault
from kubenova_openstack.web import Req, Router, reply

SCHEMA = "/v2/schemas/image"
PROPERTIES = tuple(ImageProperties.model_fields)
"""The image properties kubenova knows (Nova's names); the API server refuses any other."""


def versions(base: str) -> web.Response:
    values = [
        {
            "id": f"v2.{minor}",
            "status": "CURRENT" if minor == 16 else "SUPPORTED",
            "links": [{"rel": "self", "href": f"{base}/v2/"}],
        }
        for minor in (16, 15, 9, 7, 6, 5, 4, 3, 2, 1, 0)
    ]
    return reply({"versions": values}, status=300)


def register(router: Router) -> None:
    router.add("GET", "/images", list_images)
    router.add("GET", "/images/{id}", show_image)
    router.add("DELETE", "/images/{id}", delete_image)


def _disk(spec: dict[str, Any]) -> dict[str, Any] | None:
    source = spec.get("source") or {}
    if "disk" in source:
        disk: dict[str, Any] = source["disk"]
        return disk
    uec = source.get("uec") or {}
    found: dict[str, Any] | None = uec.get("disk")
    return found


def view(image: dict[str, Any]) -> dict[str, Any]:
    """An Image as Glance shows it: its core fields plus a few well-known properties."""
    meta, spec = image["metadata"], image.get("spec") or {}
    disk = _disk(spec)
    created = meta.get("creationTimestamp")
    out: dict[str, Any] = {
        "id": meta["uid"],
        "name": names.display_name(image),
        "status": "active" if not meta.get("deletionTimestamp") else "deleted",
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "checksum": None,
        "os_hash_algo": "sha256" if disk else None,
        "os_hash_value": disk["sha256"] if disk else None,
        "owner": None,
        "size": None,
        "virtual_size": None,
        "min_disk": int(spec.get("minDiskGiB", 0)),
        "min_ram": int(spec.get("minMemoryMiB", 0)),
        "container_format": "ami" if "uec" in (spec.get("source") or {}) else "bare",
        "disk_format": (disk or {}).get("format", "qcow2") if disk else "ami",
        "created_at": created,
        "updated_at": created,
        "tags": [],
        "self": f"/v2/images/{meta['uid']}",
        "file": f"/v2/images/{meta['uid']}/file",
        "schema": SCHEMA,
        "architecture": str(spec.get("architecture", "x86_64")),
    }
    if spec.get("virtType"):
        out["hypervisor_type"] = spec["virtType"]
    out.update(properties(spec))
    return out


def properties(spec: dict[str, Any]) -> dict[str, str]:
    """The Image's properties as Glance keeps them: strings, only those set."""
    found = spec.get("properties") or {}
    return {key: str(found[key]) for key in PROPERTIES if found.get(key) is not None}


def _matches(req: Req, image: dict[str, Any]) -> bool:
    shown = view(image)
    for key in ("name", "status", "visibility", "disk_format", "container_format", *PROPERTIES):
        wanted = req.query(key)
        if wanted is None:
            continue
        if wanted.startswith("in:"):
            if str(shown.get(key)) not in wanted[3:].split(","):
                return False
        elif str(shown.get(key)) != wanted:
            return False
    wanted_id = req.query("id")
    if wanted_id is not None:
        ids = wanted_id[3:].split(",") if wanted_id.startswith("in:") else [wanted_id]
        if shown["id"] not in ids:
            return False
    return True


async def list_images(req: Req) -> web.Response:
    items = await req.kube.list(req.context.caller, constants.IMAGES)
    items.sort(key=lambda i: (i["metadata"].get("creationTimestamp", ""), i["metadata"]["uid"]))
    items.reverse()  # Glance's default order: newest first
    shown = [view(i) for i in items if _matches(req, i)]
    marker = req.query("marker")
    if marker:
        ids = [i["id"] for i in shown]
        if marker not in ids:
            raise Fault(400, f"marker {marker} could not be found")
        shown = shown[ids.index(marker) + 1 :]
    body: dict[str, Any] = {"images": shown, "schema": "/v2/schemas/images", "first": "/v2/images"}
    count = req.limit()
    if count is not None and len(shown) > count:
        body["images"] = shown[:count]
        if count:
            body["next"] = f"/v2/images?marker={shown[count - 1]['id']}&limit={count}"
    return reply(body)


async def show_image(req: Req) -> web.Response:
    return reply(view(await lookup.image(req, req.params["id"])))


async def delete_image(req: Req) -> web.Response:
    image = await lookup.image(req, req.params["id"])
    await req.kube.delete(req.context.caller, constants.IMAGES, image["metadata"]["name"])
    return reply(status=204)
