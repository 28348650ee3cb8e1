"""Errors as each OpenStack service spells them.

Nova answers ``{"itemNotFound": {"code": 404, "message": …}}`` (the key names the kind of
fault), Keystone ``{"error": {"code": 401, "title": "Unauthorized", "message": …}}``, Glance a
short text. Handlers raise :class:`Fault` with the HTTP status and a message; the middleware in
:mod:`kubenova_openstack.app` writes it in the dialect of the service the path belongs to.
An error from the Kubernetes API becomes the fault a Nova user expects (403 stays forbidden,
404 itemNotFound, 409 conflictingRequest, 422 badRequest with the API server's reason).
"""

from __future__ import annotations

from typing import Any

from kubenova_openstack.kubeapi import KubeError

NOVA_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class Fault(Exception):
    """An answer other than success, with the status and what to tell the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> Fault:
    return Fault(400, message)


def not_found(message: str) -> Fault:
    return Fault(404, message)


def conflict(message: str) -> Fault:
    return Fault(409, message)


def forbidden(message: str) -> Fault:
    return Fault(403, message)


def from_kube(exc: KubeError, what: str) -> Fault:
    """The fault for an API server error while doing ``what``."""
    if exc.status == 403:
        return Fault(403, f"Policy doesn't allow {what}: {exc.message}")
    if exc.status == 401:
        return Fault(401, "The request you have made requires authentication.")
    if exc.status == 404:
        return Fault(404, f"{what}: not found")
    if exc.status == 409:
        return Fault(409, f"{what}: {exc.message}")
    if exc.status in (400, 422):
        return Fault(400, f"{what}: {exc.message}")
    return Fault(503 if exc.status >= 500 else 500, f"{what}: {exc.message}")


def nova_body(status: int, message: str) -> dict[str, Any]:
    name = NOVA_NAMES.get(status, "computeFault")
    return {name: {"code": status, "message": message}}


def keystone_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "title": TITLES.get(status, "Error"), "message": message}}
