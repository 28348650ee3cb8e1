"""Compute's version documents at ``/``, ``/v2/`` and ``/v2.1/`` (Nova's shapes)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kubenova_openstack import microversion
from kubenova_openstack.web import reply

V21_UPDATED = "2013-07-23T11:33:21Z"
V2_UPDATED = "2025-07-04T12:00:00Z"


def _version(base: str, which: str, detail: bool) -> dict[str, Any]:
    v21 = which == "v2.1"
    doc: dict[str, Any] = {
        "id": "v2.1" if v21 else "v2.0",
        "links": [{"href": f"{base}/{'v2.1' if v21 else 'v2'}/", "rel": "self"}],
        "status": "CURRENT" if v21 else "DEPRECATED",
        "version": str(microversion.MAX) if v21 else "",
        "min_version": str(microversion.MIN) if v21 else "",
        "updated": V21_UPDATED if v21 else V2_UPDATED,
    }
    if detail:
        doc["links"].append(
            {"href": "http://docs.openstack.org/", "rel": "describedby", "type": "text/html"}
        )
        doc["media-types"] = [
            {
                "base": "application/json",
                "type": f"application/vnd.openstack.compute+json;version={'2.1' if v21 else '2'}",
            }
        ]
    return doc


def root(base: str) -> web.Response:
    return reply({"versions": [_version(base, "v2", False), _version(base, "v2.1", False)]})


def one(base: str, which: str) -> web.Response:
    return reply({"version": _version(base, which, True)})
