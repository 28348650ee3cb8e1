"""The aiohttp application: which service a path belongs to, its identity and microversion,
its request id, and faults in its own dialect.

Compute is served at the root (``/`` lists its versions, ``/v2.1/…`` and the legacy ``/v2/…``
its API, with or without a project id after the version), Image v2 under ``/image`` and
Identity v3 under ``/identity``; the catalog names these three endpoints.
"""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web

from kubenova_openstack import auth, faults, identity, image, microversion
from kubenova_openstack.compute import routes as compute_routes
from kubenova_openstack.compute import versions
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import Kube, KubeError
from kubenova_openstack.settings import Settings
from kubenova_openstack.web import Req, Router, Services

log = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)


def build(settings: Settings, kube: Kube) -> web.Application:
    """The application; its start-up loads the token key, its clean-up closes the client."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    compute = Router()
    compute_routes.register(compute)
    compute_first = compute.first_segments() | compute_routes.NOT_SERVED
    image_router = Router()
    image.register(image_router)
    identity_router = Router()
    identity.register(identity_router)

    async def start(app: web.Application) -> None:
        await kube.start()
        key = await auth.load_key(kube, settings)
        app[SERVICES_KEY] = Services(settings, kube, auth.Tokens(key, settings.token_ttl_seconds))

    async def stop(_: web.Application) -> None:
        await kube.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

    async def handle(request: web.Request) -> web.StreamResponse:
        request_id = f"req-{uuid.uuid4()}"
        path = request.path
        services = app[SERVICES_KEY]
        if path == "/identity" or path.startswith("/identity/"):
            response = await _identity(request, services, identity_router)
        elif path == "/image" or path.startswith("/image/"):
            response = await _image(request, services, image_router)
        else:
            response = await _compute(request, services, compute, compute_first)
            response.headers["X-Compute-Request-Id"] = request_id
        response.headers["x-openstack-request-id"] = request_id
        log.info("%s %s %s -> %s", request_id, request.method, request.path_qs, response.status)
        return response

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _fault_response(
    status: int, message: str, dialect: str, headers: dict[str, str] | None = None
) -> web.Response:
    if dialect == "compute":
        body = faults.nova_body(status, message)
    elif dialect == "identity":
        body = faults.keystone_body(status, message)
    else:
        return web.Response(
            status=status, text=f"{status} {faults.TITLES.get(status, 'Error')}\n\n{message}\n"
        )
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


# ----------------------------------------------------------------------------- compute


def _version_headers(version: microversion.Version) -> dict[str, str]:
    return {
        microversion.HEADER: f"compute {version}",
        microversion.LEGACY_HEADER: str(version),
    }


def _add_vary(response: web.StreamResponse) -> None:
    for name in (microversion.HEADER, microversion.LEGACY_HEADER):
        response.headers.add("Vary", name)


async def _compute(
    request: web.Request, services: Services, router: Router, first: set[str]
) -> web.StreamResponse:
    path = request.path.rstrip("/")
    base = services.settings.base_url
    if path == "":
        return versions.root(base) if request.method in ("GET", "HEAD") else _405()
    segments = path.lstrip("/").split("/")
    root = segments[0]
    if root not in ("v2", "v2.1"):
        return _fault_response(404, "The resource could not be found.", "compute")
    legacy = root == "v2"
    version = microversion.DEFAULT
    if not legacy:
        try:
            version = microversion.requested(
                request.headers.getall(microversion.HEADER, []),
                request.headers.getall(microversion.LEGACY_HEADER, []),
            )
        except Fault as fault:
            return _fault_response(fault.status, fault.message, "compute")
    rest = segments[1:]
    url_project = None
    if rest and rest[0] not in first:
        url_project, rest = rest[0], rest[1:]
    headers = {} if legacy else _version_headers(version)
    try:
        if not rest:
            response: web.StreamResponse = versions.one(base, "v2" if legacy else "v2.1")
        else:
            handler, params = router.resolve(request.method, "/" + "/".join(rest))
            ctx = auth.context_for(services.tokens, services.settings, request.headers, url_project)
            prefix = f"{base}/{root}"
            req = Req(request, services, params, version, ctx, prefix)
            response = await handler(req)
    except Fault as fault:
        response = _fault_response(fault.status, fault.message, "compute")
    except KubeError as exc:
        mapped = faults.from_kube(exc, f"{request.method} {request.path}")
        response = _fault_response(mapped.status, mapped.message, "compute")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = _fault_response(
            500, "Unexpected API Error. Please report this at kubenova's issue tracker.", "compute"
        )
    for key, value in headers.items():
        response.headers[key] = value
    if headers:
        _add_vary(response)
    return response


def _405() -> web.Response:
    return _fault_response(405, "The method is not allowed for the requested URL.", "compute")


# ----------------------------------------------------------------------------- image, identity


async def _image(request: web.Request, services: Services, router: Router) -> web.StreamResponse:
    base = services.settings.base_url + "/image"
    path = request.path[len("/image") :].rstrip("/")
    try:
        if path == "":
            return image.versions(base)
        if not path.startswith("/v2"):
            raise Fault(404, "The resource could not be found.")
        handler, params = router.resolve(request.method, path[len("/v2") :] or "/")
        ctx = auth.context_for(services.tokens, services.settings, request.headers, None)
        return await handler(Req(request, services, params, microversion.DEFAULT, ctx, base))
    except Fault as fault:
        return _fault_response(fault.status, fault.message, "image")
    except KubeError as exc:
        mapped = faults.from_kube(exc, f"{request.method} {request.path}")
        return _fault_response(mapped.status, mapped.message, "image")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _fault_response(500, "Unexpected error", "image")


async def _identity(request: web.Request, services: Services, router: Router) -> web.StreamResponse:
    base = services.settings.base_url + "/identity"
    path = request.path[len("/identity") :].rstrip("/")
    try:
        if path == "":
            return identity.versions(base)
        if not path.startswith("/v3"):
            raise Fault(404, "The resource could not be found.")
        handler, params = router.resolve(request.method, path[len("/v3") :] or "/")
        return await handler(Req(request, services, params, microversion.DEFAULT, None, base))
    except Fault as fault:
        return _fault_response(fault.status, fault.message, "identity")
    except KubeError as exc:
        mapped = faults.from_kube(exc, f"{request.method} {request.path}")
        return _fault_response(mapped.status, mapped.message, "identity")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _fault_response(500, "An unexpected error prevented the request.", "identity")
