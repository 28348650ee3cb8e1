"""Identity v3, the part OpenStack clients need to log in (Keystone's shapes).

``POST /v3/auth/tokens`` takes the ``password`` method (users listed in the facade's users
Secret, each mapped to a Kubernetes user and groups) and the ``token`` method (a Kubernetes
bearer token, checked with a TokenReview, or a token this facade issued, to re-scope it). The
scope is a project, i.e. a namespace the user may use (RBAC lets them list Servers there). The
answer carries the token in ``X-Subject-Token`` and a catalog of the compute, image and
identity endpoints. Domains are one: ``Default``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kubenova_api import constants
from kubenova_openstack import auth
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import Caller, KubeError
from kubenova_openstack.web import Req, Router, reply

UPDATED = "2020-04-07T00:00:00Z"
DOMAIN = {"id": "default", "name": "Default"}
UNAUTHORIZED = "The request you have made requires authentication."


def _version(base: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{base}/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def versions(base: str) -> web.Response:
    return reply({"versions": {"values": [_version(base)]}}, status=300)


def register(router: Router) -> None:
    router.add("GET", "/", _version_doc)
    router.add("POST", "/auth/tokens", issue)
    router.add("GET", "/auth/tokens", validate)
    router.add("DELETE", "/auth/tokens", revoke)
    router.add("GET", "/auth/projects", projects)
    router.add("GET", "/auth/catalog", catalog_of)
    router.add("GET", "/projects", project_list)
    router.add("GET", "/projects/{id}", project)
    router.add("GET", "/users/{id}/projects", user_projects)


async def _version_doc(req: Req) -> web.Response:
    return reply({"version": _version(req.base)})


def _time(epoch: float) -> str:
    when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def catalog(req: Req) -> list[dict[str, Any]]:
    base, region = req.settings.base_url, req.settings.region
    out = []
    for kind, name, url in (
        ("compute", "nova", f"{base}/v2.1"),
        ("image", "glance", f"{base}/image"),
        ("identity", "keystone", f"{base}/identity"),
    ):
        endpoints = [
            {
                "id": f"{name}-{interface}",
                "interface": interface,
                "region": region,
                "region_id": region,
                "url": url,
            }
            for interface in ("public", "internal", "admin")
        ]
        out.append({"endpoints": endpoints, "id": name, "type": kind, "name": name})
    return out


async def _namespace_usable(req: Req, caller: Caller, namespace: str) -> bool:
    try:
        return await req.kube.can(caller, "list", constants.SERVERS, namespace)
    except KubeError:
        return False


def _project_scope(body: dict[str, Any]) -> tuple[str | None, bool]:
    """The project the request scopes to (a name or id: both are the namespace), and
    whether it asked for a scope at all."""
    scope = body.get("scope")
    if scope in (None, "unscoped"):
        return None, False
    if not isinstance(scope, dict):
        raise Fault(400, "Invalid scope")
    if "project" not in scope:
        if "system" in scope or "domain" in scope:
            raise Fault(401, "kubenova scopes tokens to projects (namespaces) only")
        raise Fault(400, "Invalid scope")
    proj = scope["project"] or {}
    name = proj.get("id") or proj.get("name")
    if not name:
        raise Fault(400, "A project scope needs an id or a name")
    return str(name), True


async def issue(req: Req) -> web.Response:
    body = await req.body()
    auth_body = (body or {}).get("auth") if isinstance(body, dict) else None
    if not isinstance(auth_body, dict):
        raise Fault(400, "Expecting to find auth in request body")
    ident = auth_body.get("identity") or {}
    methods = tuple(ident.get("methods") or ())
    project, scoped = _project_scope(auth_body)
    kube = req.kube
    if "password" in methods:
        user_body = (ident.get("password") or {}).get("user") or {}
        name = str(user_body.get("name") or user_body.get("id") or "")
        user = await auth.password_user(
            kube, req.settings, name, str(user_body.get("password") or "")
        )
        k8s_user, groups, display = user.kubernetes_user, user.groups, user.name
        default_project = user.default_project
    elif "token" in methods:
        raw = str((ident.get("token") or {}).get("id") or "")
        if raw.startswith(auth.PREFIX):
            old = req.services.tokens.verify(raw)
            k8s_user, groups, display = old.user, old.groups, old.display_user
            default_project = old.project
        else:
            review = await kube.token_review(raw)
            if not review.get("authenticated"):
                raise Fault(401, UNAUTHORIZED)
            info = review.get("user") or {}
            k8s_user = str(info.get("username"))
            groups = tuple(g for g in info.get("groups") or () if g != "system:authenticated")
            display = k8s_user
            default_project = None
    else:
        raise Fault(401, "kubenova's Identity takes the password and token methods")
    caller = Caller(user=k8s_user, groups=groups)
    if not scoped:
        project = default_project
    if project is not None and not await _namespace_usable(req, caller, project):
        raise Fault(401, f"User {display} has no access to project {project}")
    text, token = req.services.tokens.issue(k8s_user, groups, project, methods, display)
    return reply(
        {"token": await _token_body(req, token, with_catalog="nocatalog" not in req.http.query)},
        status=201,
        headers={"X-Subject-Token": text},
    )


async def _token_body(req: Req, token: auth.Token, with_catalog: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "methods": list(token.methods),
        "user": {
            "domain": DOMAIN,
            "id": token.display_user,
            "name": token.display_user,
            "password_expires_at": None,
        },
        "audit_ids": [token.audit_id],
        "expires_at": _time(token.expires),
        "issued_at": _time(token.issued),
    }
    if token.project is not None:
        roles = await auth.roles(req.kube, token.caller(), token.project)
        out["project"] = {"domain": DOMAIN, "id": token.project, "name": token.project}
        out["is_domain"] = False
        out["roles"] = [{"id": r, "name": r} for r in roles]
        if with_catalog:
            out["catalog"] = catalog(req)
    return out


def _subject(req: Req) -> tuple[auth.Token, str]:
    """The caller's own token must be valid, and the one asked about (X-Subject-Token)."""
    caller_token = req.http.headers.get("X-Auth-Token") or ""
    subject = req.http.headers.get("X-Subject-Token") or caller_token
    if not caller_token.startswith(auth.PREFIX) or not subject.startswith(auth.PREFIX):
        raise Fault(401, UNAUTHORIZED)
    req.services.tokens.verify(caller_token)
    try:
        return req.services.tokens.verify(subject), subject
    except Fault as exc:
        raise Fault(404, "Could not find token") from exc


async def validate(req: Req) -> web.Response:
    token, text = _subject(req)
    body = await _token_body(req, token, with_catalog="nocatalog" not in req.http.query)
    return reply({"token": body}, headers={"X-Subject-Token": text})


async def revoke(req: Req) -> web.Response:
    """Tokens are stateless and cannot be revoked one by one: they expire (``--token-ttl-
    seconds``); rotating the key Secret revokes them all. Keystone answers 204."""
    _subject(req)
    return reply(status=204)


async def catalog_of(req: Req) -> web.Response:
    _subject(req)
    return reply({"catalog": catalog(req), "links": {"self": f"{req.base}/v3/auth/catalog"}})


def _token_caller(req: Req) -> tuple[auth.Token, Caller]:
    token, _ = _subject(req)
    return token, token.caller()


async def projects(req: Req) -> web.Response:
    """The namespaces the caller may use (may list Servers in)."""
    out = await _usable_projects(req)
    return reply({"projects": out, "links": {"self": f"{req.base}/v3/auth/projects"}})


#: ``GET /v3/projects`` filters, and how each reads a project.
PROJECT_FILTERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "name": lambda p: p["name"],
    "domain_id": lambda p: p["domain_id"],
    "parent_id": lambda p: p["parent_id"],
    "enabled": lambda p: str(p["enabled"]).lower(),
    "is_domain": lambda p: str(p["is_domain"]).lower(),
}


def _filtered(req: Req, projects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The projects that match the request's filters."""
    for key, read in PROJECT_FILTERS.items():
        wanted = req.query(key)
        if wanted is not None:
            wanted = wanted.lower() if key in ("enabled", "is_domain") else wanted
            projects = [p for p in projects if read(p) == wanted]
    return projects


async def project_list(req: Req) -> web.Response:
    """Keystone's project list, as ``openstack project list`` and ``quota list`` read it: the
    projects the caller may use (Keystone lets only an administrator list every project; here
    an administrator may use every namespace, so sees them all), filtered by ``name``,
    ``domain_id``, ``parent_id``, ``enabled`` and ``is_domain``."""
    out = _filtered(req, await _usable_projects(req))
    return reply(
        {
            "projects": out,
            "links": {"self": f"{req.base}/v3/projects", "next": None, "previous": None},
        }
    )


async def user_projects(req: Req) -> web.Response:
    """Keystone's ``GET /v3/users/{id}/projects``: the user's own projects; another user's
    only for an administrator (Keystone's ``identity:list_user_projects``), that user read
    from the users Secret and asked about as the Kubernetes user it is."""
    token, caller = _token_caller(req)
    user_id = req.params["id"]
    if user_id != token.display_user:
        if not await req.kube.is_admin(caller):
            raise Fault(
                403,
                "You are not authorized to perform the requested action: "
                "identity:list_user_projects.",
            )
        user = await auth.known_user(req.kube, req.settings, user_id)
        if user is None:
            raise Fault(404, f"Could not find user: {user_id}.")
        caller = Caller(user=user.kubernetes_user, groups=user.groups)
    out = _filtered(req, await _usable_projects(req, caller))
    self_link = f"{req.base}/v3/users/{user_id}/projects"
    return reply({"projects": out, "links": {"self": self_link, "next": None, "previous": None}})


async def _usable_projects(req: Req, caller: Caller | None = None) -> list[dict[str, Any]]:
    """The namespaces ``caller`` (the token's user unless given) may use."""
    if caller is None:
        _, caller = _token_caller(req)
    try:
        items = await req.kube.list(caller, "namespaces", core=True)
    except KubeError as exc:
        if exc.status != 403:
            raise
        items = await req.kube.list(None, "namespaces", core=True)
    names = [i["metadata"]["name"] for i in items]
    usable = await asyncio.gather(*(_namespace_usable(req, caller, n) for n in names))
    return [_project_body(req, n) for n, ok in zip(names, usable, strict=True) if ok]


def _project_body(req: Req, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "name": name,
        "domain_id": "default",
        "description": f"namespace {name}",
        "enabled": True,
        "is_domain": False,
        "parent_id": "default",
        "tags": [],
        "options": {},
        "links": {"self": f"{req.base}/v3/projects/{name}"},
    }


async def project(req: Req) -> web.Response:
    _, caller = _token_caller(req)
    name = req.params["id"]
    if not await _namespace_usable(req, caller, name):
        raise Fault(404, f"Could not find project: {name}.")
    return reply({"project": _project_body(req, name)})
