"""Finding kubenova objects by their OpenStack ids, as the caller."""

from __future__ import annotations

from typing import Any

from kubenova_api import constants
from kubenova_api.resources import Server
from kubenova_openstack import names
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req


def ref_id(ref: str) -> str:
    """The id in an ``imageRef`` or ``flavorRef``: the id itself, or the last part of its
    URL (``http://…/v2.1/flavors/1`` -> ``1``)."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


async def server(req: Req, server_id: str) -> Server:
    """The Server whose UID is ``server_id`` in the request's project; 404 otherwise."""
    kube, caller, ns = req.kube, req.context.caller, req.project
    missing = Fault(404, f"Instance {server_id} could not be found.")
    if not names.LABEL_VALUE.match(server_id) or len(server_id) > 63:
        raise missing
    found = await kube.objects(caller, Server, ns, labels=f"{names.SERVER_ID}={server_id}")
    for item in found:
        if item.uid == server_id:
            return item
    # Made with kubectl (no id label): look through the namespace.
    for item in await kube.objects(caller, Server, ns):
        if item.uid == server_id:
            return item
    raise missing


async def flavor(req: Req, flavor_id: str) -> dict[str, Any]:
    """The Flavor with this Nova id (label), or named so when it has no id of its own."""
    kube, caller = req.kube, req.context.caller
    missing = Fault(404, f"Flavor {flavor_id} could not be found.")
    if names.LABEL_VALUE.match(flavor_id) and len(flavor_id) <= 63:
        found = await kube.list(caller, constants.FLAVORS, labels=f"{names.FLAVOR_ID}={flavor_id}")
        if found:
            return found[0]
    for item in await kube.list(caller, constants.FLAVORS):
        if names.flavor_id(item) == flavor_id:
            return item
    raise missing


async def flavors(req: Req) -> list[dict[str, Any]]:
    return await req.kube.list(req.context.caller, constants.FLAVORS)


async def image(req: Req, image_id: str) -> dict[str, Any]:
    """The Image whose UID is ``image_id``."""
    try:
        items = await req.kube.list(req.context.caller, constants.IMAGES)
    except KubeError as exc:
        if exc.status == 403:
            raise Fault(403, f"Policy doesn't allow reading images: {exc.message}") from exc
        raise
    for item in items:
        if item["metadata"]["uid"] == image_id:
            return item
    raise Fault(404, f"Image {image_id} could not be found.")
