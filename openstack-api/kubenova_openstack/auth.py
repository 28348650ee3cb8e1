"""Who a request acts as, and the tokens the facade's Identity endpoint issues.

``X-Auth-Token`` is either a token this facade issued (``kn1.<payload>.<signature>``: the
Kubernetes user and groups to impersonate, the project, the expiry, signed with HMAC-SHA256
under a key kept in a Secret, so any replica and any restart verifies it), or anything else,
which is taken for a Kubernetes bearer token and passed through to the API server unchanged.
Nothing about a token is remembered by the facade: it is stateless.

A project is a namespace. A token the facade issued names its project; a Kubernetes token
takes the project from the URL (``/v2.1/<project>/servers``), ``X-Project-Id`` /
``X-Auth-Project-Id``, or the default. Roles are what RBAC allows, asked of the API server as
the caller: ``reader`` (list Servers in the namespace), ``member`` (create them), ``admin``
(change Hypervisors, a cluster-wide right).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

import yaml

from kubenova_api import constants
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import Caller, Kube, KubeError
from kubenova_openstack.settings import Settings

PREFIX = "kn1."
NOAUTH_TOKEN = "notused"  # noqa: S105 - keystoneauth's placeholder, not a secret
KEY_FIELD = "key"


@dataclasses.dataclass(frozen=True)
class Token:
    """What an issued token says."""

    user: str
    groups: tuple[str, ...]
    project: str | None
    issued: float
    expires: float
    methods: tuple[str, ...]
    audit_id: str
    display_user: str

    def caller(self) -> Caller:
        return Caller(user=self.user, groups=self.groups)


@dataclasses.dataclass(frozen=True)
class Context:
    """A request's identity: how to call the API server, in which project."""

    caller: Caller
    project: str
    user_id: str
    token: Token | None = None
    project_fixed: bool = False
    """The project came with the token (a URL naming another one is refused)."""


class Tokens:
    """Issuing and verifying ``kn1`` tokens with the key from the facade's Secret."""

    def __init__(self, key: bytes, ttl: int) -> None:
        self._key = key
        self.ttl = ttl

    def issue(
        self,
        user: str,
        groups: tuple[str, ...],
        project: str | None,
        methods: tuple[str, ...],
        display_user: str | None = None,
    ) -> tuple[str, Token]:
        now = time.time()
        token = Token(
            user=user,
            groups=groups,
            project=project,
            issued=now,
            expires=now + self.ttl,
            methods=methods,
            audit_id=_b64(secrets.token_bytes(16)),
            display_user=display_user or user,
        )
        payload = {
            "u": token.user,
            "g": list(token.groups),
            "p": token.project,
            "i": token.issued,
            "x": token.expires,
            "m": list(token.methods),
            "a": token.audit_id,
            "n": token.display_user,
        }
        body = PREFIX + _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._sign(body))}", token

    def verify(self, text: str) -> Token:
        """The token's content; 401 when it is forged, damaged or expired."""
        body, _, signature = text.rpartition(".")
        if not body.startswith(PREFIX) or not hmac.compare_digest(
            _b64(self._sign(body)), signature
        ):
            raise Fault(401, "The request you have made requires authentication.")
        try:
            data = json.loads(_unb64(body[len(PREFIX) :]))
        except ValueError as exc:
            raise Fault(401, "The request you have made requires authentication.") from exc
        if float(data["x"]) < time.time():
            raise Fault(401, "The token has expired.")
        return Token(
            user=str(data["u"]),
            groups=tuple(data.get("g") or ()),
            project=data.get("p"),
            issued=float(data["i"]),
            expires=float(data["x"]),
            methods=tuple(data.get("m") or ()),
            audit_id=str(data.get("a") or ""),
            display_user=str(data.get("n") or data["u"]),
        )

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def load_key(kube: Kube, settings: Settings) -> bytes:
    """The signing key from its Secret, made (by the facade) when it does not exist yet; a
    second replica racing to make it reads the winner's."""
    for _ in range(3):
        secret = await kube.get_or_none(
            None, "secrets", settings.token_secret, settings.namespace, core=True
        )
        if secret is not None:
            return base64.b64decode((secret.get("data") or {})[KEY_FIELD])
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": settings.token_secret, "namespace": settings.namespace},
            "type": "Opaque",
            "data": {KEY_FIELD: base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        try:
            await kube.create(None, "secrets", body, settings.namespace, core=True)
        except KubeError as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"could not read or create Secret {settings.token_secret}")


# ----------------------------------------------------------------------------- users


@dataclasses.dataclass(frozen=True)
class User:
    """A Keystone password user, mapped to a Kubernetes user (and groups) to impersonate."""

    name: str
    password: str
    kubernetes_user: str
    groups: tuple[str, ...]
    default_project: str | None


async def _user_entries(kube: Kube, settings: Settings) -> list[dict[str, Any]]:
    """The users Secret's entries, read on every call (so a change to the Secret counts at
    once)."""
    secret = await kube.get_or_none(
        None, "secrets", settings.users_secret, settings.namespace, core=True
    )
    users: Any = []
    if secret is not None:
        raw = (secret.get("data") or {}).get("users.yaml")
        if raw:
            users = yaml.safe_load(base64.b64decode(raw)) or []
    return [u for u in users if isinstance(u, dict)] if isinstance(users, list) else []


def _user(entry: dict[str, Any]) -> User:
    name = str(entry.get("name"))
    return User(
        name=name,
        password="",
        kubernetes_user=str(entry.get("kubernetesUser") or name),
        groups=tuple(str(g) for g in entry.get("groups") or ()),
        default_project=entry.get("defaultProject"),
    )


async def password_user(kube: Kube, settings: Settings, name: str, password: str) -> User:
    """The user whose name and password match; 401 otherwise."""
    for entry in await _user_entries(kube, settings):
        if str(entry.get("name")) != name:
            continue
        if hmac.compare_digest(str(entry.get("password", "")).encode(), password.encode()):
            return _user(entry)
    raise Fault(401, "The request you have made requires authentication.")


async def known_user(kube: Kube, settings: Settings, name: str) -> User | None:
    """The password user called ``name`` (without its password), if there is one."""
    for entry in await _user_entries(kube, settings):
        if str(entry.get("name")) == name:
            return _user(entry)
    return None


# ----------------------------------------------------------------------------- requests


def context_for(
    tokens: Tokens,
    settings: Settings,
    headers: Any,
    url_project: str | None,
) -> Context:
    """The identity of a request from its headers (and the project its URL names)."""
    raw = headers.get("X-Auth-Token")
    if raw == NOAUTH_TOKEN:
        raw = None  # keystoneauth's "none" plugin sends this placeholder
    header_project = headers.get("X-Project-Id") or headers.get("X-Auth-Project-Id")
    if raw and raw.startswith(PREFIX):
        token = tokens.verify(raw)
        project = token.project or url_project or header_project or settings.default_project
        if token.project and url_project and url_project != token.project:
            raise Fault(
                400,
                f"Malformed request URL: URL's project_id '{url_project}' doesn't match "
                f"Context's project_id '{token.project}'",
            )
        return Context(token.caller(), project, token.display_user, token, bool(token.project))
    project = url_project or header_project or settings.default_project
    if raw:
        return Context(Caller(token=raw), project, "kubernetes-token")
    if settings.noauth_user:
        caller = Caller(user=settings.noauth_user, groups=settings.noauth_groups)
        return Context(caller, project, settings.noauth_user)
    raise Fault(401, "The request you have made requires authentication.")


async def roles(kube: Kube, caller: Caller, project: str) -> list[str]:
    """Keystone roles from RBAC: reader, member, admin."""
    reader, member, admin = await asyncio.gather(
        kube.can(caller, "list", constants.SERVERS, project),
        kube.can(caller, "create", constants.SERVERS, project),
        kube.is_admin(caller),
    )
    out = []
    if reader:
        out.append("reader")
    if member:
        out.append("member")
    if admin:
        out.append("admin")
    return out


def new_id() -> str:
    return uuid.uuid4().hex
