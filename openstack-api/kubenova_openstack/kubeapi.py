"""The Kubernetes API as the caller: a small asynchronous REST client over aiohttp.

The facade keeps nothing of its own; every read and write goes to the API server with the
identity of whoever made the OpenStack request, so Kubernetes RBAC decides. A caller is either
a Kubernetes bearer token passed through unchanged, or a user (and groups) the facade
authenticated itself (a Keystone password, a token it issued), for which it calls the API
server with its own credentials plus ``Impersonate-User`` / ``Impersonate-Group`` headers.
The facade's own credentials (a kubeconfig or the pod's service account) are used bare only
for TokenReview, for reading its users Secret and its token key.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import ssl
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from kubenova_api import constants, kube
from kubenova_api.common import KubeObject

K = TypeVar("K", bound=KubeObject)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
ATTEMPTS = 6


class KubeError(Exception):
    """An answer of the API server other than 2xx: its status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a request acts as: a bearer token passed through, or a user to impersonate."""

    token: str | None = None
    user: str | None = None
    groups: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.user or "the bearer of a Kubernetes token"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the API server is and how the facade itself authenticates to it."""

    server: str
    ca_file: str | None
    token: str | None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    @classmethod
    def from_kubeconfig(cls, path: str | None) -> Endpoint:
        """Read with the kubernetes client's own loader (kubeconfig or in-cluster)."""
        cfg = kube.api_client(path).configuration
        auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken") or ""
        _, _, token = str(auth).partition(" ")
        return cls(
            server=str(cfg.host).rstrip("/"),
            ca_file=cfg.ssl_ca_cert,
            token=token or None,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            verify=bool(cfg.verify_ssl),
        )


class Kube:
    """Requests to the API server; one connection pool for every caller."""

    def __init__(self, endpoint: Endpoint, *, limit: int = 64) -> None:
        self.endpoint = endpoint
        context: ssl.SSLContext | bool = False
        if endpoint.server.startswith("https"):
            context = ssl.create_default_context(cafile=endpoint.ca_file)
            if endpoint.cert_file and endpoint.key_file:
                context.load_cert_chain(endpoint.cert_file, endpoint.key_file)
            if not endpoint.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._ssl = context
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, caller: Caller | None) -> dict[str, str]:
        if caller is not None and caller.token:
            return {"Authorization": f"Bearer {caller.token}"}
        headers: dict[str, str] = {}
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        if caller is not None and caller.user:
            headers["Impersonate-User"] = caller.user
        return headers

    async def request(
        self,
        method: str,
        path: str,
        caller: Caller | None,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; ``caller`` None means the facade itself. Raises :class:`KubeError`.

        Transient answers are retried with bounded back-off: 429 (not processed, so any
        method), and for reads also 5xx and a lost connection."""
        delay = 0.1
        for attempt in range(ATTEMPTS):
            try:
                return await self._once(method, path, caller, body, params, content_type)
            except KubeError as exc:
                transient = exc.status == 429 or (method == "GET" and exc.status >= 500)
                if not transient or attempt == ATTEMPTS - 1:
                    raise
                wait = min(exc.retry_after or delay, 2.0)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if method != "GET" or attempt == ATTEMPTS - 1:
                    raise
                wait = delay
            await asyncio.sleep(wait)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        path: str,
        caller: Caller | None,
        body: Any,
        params: Mapping[str, str] | None,
        content_type: str,
    ) -> dict[str, Any]:
        assert self._session is not None, "Kube.start() first"
        headers = self._headers(caller)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        # aiohttp takes one value per header name; impersonated groups need one header each.
        multi: list[tuple[str, str]] = list(headers.items())
        if caller is not None and caller.user and not caller.token:
            multi += [("Impersonate-Group", g) for g in caller.groups]
        async with self._session.request(
            method,
            self.endpoint.server + path,
            headers=multi,
            data=data,
            params=dict(params or {}),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                error = _error(resp.status, text)
                retry = resp.headers.get("Retry-After")
                if retry and retry.isdigit():
                    error.retry_after = float(retry)
                raise error
            return json.loads(text) if text else {}

    # ------------------------------------------------------------------ kubenova resources
    @staticmethod
    def path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{constants.GROUP}/{constants.VERSION}"
        if namespace is not None:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{plural}"
        if name is not None:
            base += f"/{quote(name)}"
        return base

    @staticmethod
    def core_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1"
        if namespace is not None:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{plural}"
        if name is not None:
            base += f"/{quote(name)}"
        return base

    async def list(
        self,
        caller: Caller | None,
        plural: str,
        namespace: str | None = None,
        *,
        labels: str | None = None,
        core: bool = False,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {}
        if labels:
            params["labelSelector"] = labels
        if fields:
            params["fieldSelector"] = fields
        path = (self.core_path if core else self.path)(plural, namespace)
        out = await self.request("GET", path, caller, params=params)
        items: list[dict[str, Any]] = out.get("items") or []
        return items

    async def list_readable(
        self,
        caller: Caller | None,
        plural: str,
        namespace: str | None = None,
        *,
        core: bool = False,
        unknown_kind_ok: bool = False,
    ) -> builtins.list[dict[str, Any]]:
        """:meth:`list`, where a kind the caller may not read (403) is none of theirs; with
        ``unknown_kind_ok``, one the API server does not serve (404) too."""
        try:
            return await self.list(caller, plural, namespace, core=core)
        except KubeError as exc:
            if exc.status == 403 or (unknown_kind_ok and exc.status == 404):
                return []
            raise

    async def objects(
        self,
        caller: Caller | None,
        cls: type[K],
        namespace: str | None = None,
        *,
        labels: str | None = None,
    ) -> builtins.list[K]:
        """The kubenova objects of kind ``cls``, parsed into its model."""
        return [cls.parse(i) for i in await self.list(caller, cls.PLURAL, namespace, labels=labels)]

    async def get(
        self,
        caller: Caller | None,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        core: bool = False,
    ) -> dict[str, Any]:
        path = (self.core_path if core else self.path)(plural, namespace, name)
        return await self.request("GET", path, caller)

    async def get_or_none(
        self,
        caller: Caller | None,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        core: bool = False,
    ) -> dict[str, Any] | None:
        try:
            return await self.get(caller, plural, name, namespace, core=core)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(
        self,
        caller: Caller | None,
        plural: str,
        body: dict[str, Any],
        namespace: str | None = None,
        *,
        core: bool = False,
    ) -> dict[str, Any]:
        path = (self.core_path if core else self.path)(plural, namespace)
        return await self.request("POST", path, caller, body=body)

    async def patch(
        self,
        caller: Caller | None,
        plural: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        core: bool = False,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        path = (self.core_path if core else self.path)(plural, namespace, name)
        return await self.request("PATCH", path, caller, body=patch, content_type=content_type)

    async def delete(
        self,
        caller: Caller | None,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        core: bool = False,
    ) -> dict[str, Any]:
        path = (self.core_path if core else self.path)(plural, namespace, name)
        return await self.request("DELETE", path, caller)

    # ------------------------------------------------------------------ authentication
    async def token_review(self, token: str) -> dict[str, Any]:
        """Who a Kubernetes bearer token belongs to (as the facade: needs tokenreviews)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        out = await self.request(
            "POST", "/apis/authentication.k8s.io/v1/tokenreviews", None, body=body
        )
        status: dict[str, Any] = out.get("status") or {}
        return status

    async def can(
        self,
        caller: Caller,
        verb: str,
        resource: str,
        namespace: str | None = None,
        *,
        group: str = constants.GROUP,
    ) -> bool:
        """Whether RBAC lets ``caller`` do ``verb`` on ``resource`` (SelfSubjectAccessReview,
        made as the caller)."""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace is not None:
            attrs["namespace"] = namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        }
        out = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            caller,
            body=body,
        )
        return bool((out.get("status") or {}).get("allowed"))

    async def is_admin(self, caller: Caller) -> bool:
        """Whether ``caller`` is an OpenStack administrator: one who may change Hypervisors
        (Keystone's ``admin`` role, what Nova's admin-only policies ask for)."""
        return await self.can(caller, "update", constants.HYPERVISORS)

    async def whoami(self, caller: Caller) -> dict[str, Any]:
        """The user the API server sees for ``caller`` (SelfSubjectReview)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        out = await self.request(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", caller, body=body
        )
        info: dict[str, Any] = (out.get("status") or {}).get("userInfo") or {}
        return info


def _error(status: int, text: str) -> KubeError:
    try:
        body = json.loads(text)
    except ValueError:
        return KubeError(status, "", text[:500])
    if not isinstance(body, dict):
        return KubeError(status, "", text[:500])
    return KubeError(status, str(body.get("reason") or ""), str(body.get("message") or text[:500]))
