"""Nova's image proxy (``/images``, before 2.36), which ``nova boot``'s flow still reads:
kubenova Images in Nova's image shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_openstack import image as glance
from kubenova_openstack import lookup
from kubenova_openstack.compute import views
from kubenova_openstack.web import Req, reply


def _check(req: Req) -> None:
    req.only_until("2.35")  # the image proxy, as Nova's MAX_PROXY_API_SUPPORT_VERSION


def _view(req: Req, image: dict[str, Any]) -> dict[str, Any]:
    g = glance.view(image)
    meta = {"architecture": g["architecture"], **glance.properties(image.get("spec") or {})}
    return {
        "id": g["id"],
        "name": g["name"],
        "minRam": g["min_ram"],
        "minDisk": g["min_disk"],
        "metadata": meta,
        "created": views.nova_time(g["created_at"]),
        "updated": views.nova_time(g["updated_at"]),
        "status": "ACTIVE",
        "progress": 100,
        "OS-EXT-IMG-SIZE:size": g["size"],
        "links": [
            *views.links(req, "images", g["id"]),
            {
                "href": f"{req.settings.base_url}/image/v2/images/{g['id']}",
                "rel": "alternate",
                "type": "application/vnd.openstack.image",
            },
        ],
    }


async def show(req: Req) -> web.Response:
    _check(req)
    return reply({"image": _view(req, await lookup.image(req, req.params["id"]))})


async def index(req: Req) -> web.Response:
    _check(req)
    items = await req.kube.list(req.context.caller, constants.IMAGES)
    shown = [
        {"id": i["metadata"]["uid"], "name": i["metadata"]["name"], "links": _view(req, i)["links"]}
        for i in items
    ]
    return reply({"images": shown})


async def detail(req: Req) -> web.Response:
    _check(req)
    items = await req.kube.list(req.context.caller, constants.IMAGES)
    return reply({"images": [_view(req, i) for i in items]})
