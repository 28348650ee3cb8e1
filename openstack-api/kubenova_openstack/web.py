"""The small frame every handler uses: a request with its identity and microversion, a router
of path templates (so a 404 or 405 is answered in the service's own dialect), JSON replies."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kubenova_openstack import auth, microversion
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import Kube
from kubenova_openstack.settings import Settings


@dataclasses.dataclass
class Services:
    """What handlers share for the life of the process: nothing per request, nothing state."""

    settings: Settings
    kube: Kube
    tokens: auth.Tokens


@dataclasses.dataclass
class Req:
    """One request as handlers see it."""

    http: web.Request
    services: Services
    params: dict[str, str]
    version: microversion.Version = microversion.DEFAULT
    ctx: auth.Context | None = None
    base: str = ""
    """The URL prefix of the service, e.g. ``http://host:8774/v2.1`` (for links)."""

    @property
    def kube(self) -> Kube:
        return self.services.kube

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def context(self) -> auth.Context:
        assert self.ctx is not None
        return self.ctx

    @property
    def project(self) -> str:
        return self.context.project

    def at_least(self, version: str) -> bool:
        return self.version.at_least(version)

    def at_most(self, version: str) -> bool:
        return self.version.at_most(version)

    def only_until(self, last: str) -> None:
        """Nova's answer to an API a later microversion removed (one served up to ``last``
        only): a 404, as its version routing gives."""
        if not self.at_most(last):
            raise Fault(404, "The resource could not be found.")

    async def body(self, *, required: bool = True) -> Any:
        text = await self.http.text()
        if not text.strip():
            if required:
                raise Fault(400, "The request body is required")
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise Fault(400, "Malformed request body") from exc

    def query(self, name: str) -> str | None:
        return self.http.query.get(name)

    def limit(self) -> int | None:
        """The ``limit`` query parameter, checked as Nova and Glance check it (a 400 for what
        is not a whole number of at least 0, never a 500); None when not given."""
        text = self.query("limit")
        if text is None:
            return None
        try:
            count = int(text)
        except ValueError as exc:
            raise Fault(400, "limit param must be an integer") from exc
        if count < 0:
            raise Fault(400, "limit param must be positive")
        return count

    def queries(self, name: str) -> list[str]:
        return list(self.http.query.getall(name, []))


Handler = Callable[[Req], Awaitable[web.StreamResponse]]


def reply(
    body: Any = None, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


@dataclasses.dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class Router:
    """Path templates such as ``/servers/{id}/action`` matched in the order added."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.rstrip("/") or "/")
        self.routes.append(Route(method, re.compile(f"^{regex}/?$"), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, {k: v for k, v in match.groupdict().items()}
            allowed = True
        if allowed:
            raise Fault(405, "The method is not allowed for the requested URL.")
        raise Fault(404, "The resource could not be found.")

    def first_segments(self) -> set[str]:
        """The first path segment of every route (how a project id in the URL is told apart
        from a collection: ``/v2.1/<project>/servers``)."""
        out = set()
        for route in self.routes:
            literal = route.pattern.pattern[2:].split("/")[0]
            if literal and "(" not in literal:
                out.add(literal)
        return out
