"""``/os-keypairs``: key pairs stored per project (namespace) as Secrets of type
``compute.kubenova.io/keypair``; ``server create --key-name`` copies the public key into the
Server's ``sshKeys`` (the config drive's ``public_keys``).

Nova keeps key pairs per user; here a project shares them, which RBAC on Secrets governs.
Before 2.92 a key pair asked for without a public key is generated here, as Nova does (an
RSA 2048 key, its private half returned once and kept nowhere); from 2.92 the public key is
required, as in Nova.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import zlib
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubenova_openstack import names
from kubenova_openstack.faults import Fault
from kubenova_openstack.kubeapi import KubeError
from kubenova_openstack.web import Req, reply

SECRET_TYPE = "compute.kubenova.io/keypair"  # noqa: S105 - a Secret type, no password
NAME = re.compile(r"^[a-zA-Z0-9 _-]+$")
NAME_292 = re.compile(r"^[a-zA-Z0-9 _.@-]+$")


def secret_name(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"keypair-{names.slug(name, 'key', 30)}-{digest}"


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint of an SSH public key: MD5 of the key blob, colon separated."""
    parts = public_key.split()
    if len(parts) < 2:
        raise Fault(400, "Keypair data is invalid: failed to parse the public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Fault(400, "Keypair data is invalid: failed to parse the public key") from exc
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def generate() -> tuple[str, str]:
    """A new SSH key pair as Nova makes one: (private key in PEM, public key in OpenSSH)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} Generated-by-Nova"


def _decoded(secret: dict[str, Any]) -> dict[str, Any]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {
        "name": names.display_name(secret),
        "public_key": data.get("public_key", ""),
        "fingerprint": data.get("fingerprint", ""),
        "type": data.get("type", "ssh"),
        "user_id": data.get("user_id", ""),
        "created_at": secret["metadata"].get("creationTimestamp"),
        "id": zlib.crc32(secret["metadata"]["uid"].encode()),
    }


async def find(req: Req, name: str) -> dict[str, Any] | None:
    secret = await req.kube.get_or_none(
        req.context.caller, "secrets", secret_name(name), req.project, core=True
    )
    if secret is None or secret.get("type") != SECRET_TYPE:
        return None
    return _decoded(secret)


def _short(req: Req, pair: dict[str, Any]) -> dict[str, Any]:
    out = {k: pair[k] for k in ("name", "public_key", "fingerprint")}
    if req.at_least("2.2"):
        out["type"] = pair["type"]
    return out


async def index(req: Req) -> web.Response:
    items = await req.kube.list(
        req.context.caller, "secrets", req.project, core=True, fields=f"type={SECRET_TYPE}"
    )
    pairs = sorted((_decoded(s) for s in items), key=lambda p: p["name"])
    marker = req.query("marker")
    limit = req.limit() if req.at_least("2.35") else None
    if req.at_least("2.35") and marker:
        found = [p["name"] for p in pairs]
        if marker not in found:
            raise Fault(404, f"Marker {marker} could not be found.")
        pairs = pairs[found.index(marker) + 1 :]
    body: dict[str, Any] = {}
    more = limit is not None and len(pairs) > limit
    pairs = pairs[:limit] if limit is not None else pairs
    if more and pairs:
        body["keypairs_links"] = [
            {
                "href": f"{req.base}/os-keypairs?limit={limit}&marker={pairs[-1]['name']}",
                "rel": "next",
            }
        ]
    return reply({"keypairs": [{"keypair": _short(req, p)} for p in pairs], **body})


async def show(req: Req) -> web.Response:
    pair = await find(req, req.params["name"])
    if pair is None:
        raise Fault(404, f"Keypair {req.params['name']} not found for user {req.context.user_id}")
    created = dt.datetime.fromisoformat(str(pair["created_at"]).replace("Z", "+00:00"))
    out = {
        "name": pair["name"],
        "public_key": pair["public_key"],
        "fingerprint": pair["fingerprint"],
        "user_id": pair["user_id"],
        "deleted": False,
        "created_at": created.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "updated_at": None,
        "deleted_at": None,
        "id": pair["id"],
    }
    if req.at_least("2.2"):
        out["type"] = pair["type"]
    return reply({"keypair": out})


async def create(req: Req) -> web.Response:
    body = await req.body()
    spec = (body or {}).get("keypair") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise Fault(400, "Invalid input for field/attribute keypair.")
    name = spec.get("name")
    pattern = NAME_292 if req.at_least("2.92") else NAME
    if not isinstance(name, str) or not pattern.match(name) or len(name) > 255:
        raise Fault(400, "Keypair data is invalid: Keypair name contains unsafe characters")
    public_key = spec.get("public_key")
    kind = str(spec.get("type", "ssh")) if req.at_least("2.2") else "ssh"
    if kind not in ("ssh", "x509"):
        raise Fault(400, "Invalid input for field/attribute type.")
    private_key = None
    if not public_key:
        if req.at_least("2.92"):
            raise Fault(400, "Invalid input for field/attribute keypair: public_key is required")
        if kind != "ssh":
            raise Fault(400, "kubenova generates ssh key pairs only: pass public_key")
        private_key, public_key = generate()
    user = str(spec.get("user_id")) if req.at_least("2.10") and spec.get("user_id") else None
    pair = {
        "public_key": str(public_key).strip(),
        "fingerprint": fingerprint(str(public_key)),
        "type": kind,
        "user_id": user or req.context.user_id,
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secret_name(name),
            "namespace": req.project,
            "labels": {names.KEYPAIR: "true"},
            "annotations": {names.DISPLAY_NAME: name},
        },
        "stringData": pair,
    }
    try:
        await req.kube.create(req.context.caller, "secrets", secret, req.project, core=True)
    except KubeError as exc:
        if exc.status == 409:
            raise Fault(409, f"Key pair '{name}' already exists.") from exc
        raise
    out = {"name": name, **{k: pair[k] for k in ("public_key", "fingerprint", "user_id")}}
    if private_key is not None:
        out["private_key"] = private_key
    if req.at_least("2.2"):
        out["type"] = kind
    return reply({"keypair": out}, status=201 if req.at_least("2.2") else 200)


async def delete(req: Req) -> web.Response:
    name = req.params["name"]
    if await find(req, name) is None:
        raise Fault(404, f"Keypair {name} not found for user {req.context.user_id}")
    await req.kube.delete(req.context.caller, "secrets", secret_name(name), req.project, core=True)
    return reply(status=204 if req.at_least("2.2") else 202)
