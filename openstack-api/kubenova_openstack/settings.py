"""The facade's settings: one frozen dataclass, read once at start-up from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8774
    """Port to listen on: Compute at ``/``, Image at ``/image``, Identity at ``/identity``."""
    public_url: str | None = None
    """Base URL clients reach the facade at (for links and the catalog); default from
    ``host`` and ``port``."""
    kubeconfig: str | None = None
    """The facade's own credentials; the pod's service account when unset."""
    namespace: str = "kubenova-system"
    """Where the facade's Secrets live: its users and its token signing key."""
    users_secret: str = "kubenova-openstack-users"  # noqa: S105 - a name
    """Secret whose ``users.yaml`` lists the Keystone password users."""
    token_secret: str = "kubenova-openstack-token-key"  # noqa: S105 - a name
    """Secret holding the key that signs the tokens the facade issues (made when missing)."""
    token_ttl_seconds: int = 3600
    """How long an issued token is valid."""
    default_project: str = "default"
    """The project (namespace) of a request whose token names none."""
    noauth_user: str | None = None
    """Requests without any token act as this Kubernetes user (Nova's noauth, for
    development and tests); refused with 401 when unset."""
    noauth_groups: tuple[str, ...] = ()
    """Groups of ``noauth_user``."""
    region: str = "RegionOne"
    """Region named in the catalog."""

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def parse(argv: list[str] | None = None) -> Settings:
    """Flags generated from the dataclass: ``--token-ttl-seconds``, ``--noauth-user``, …"""
    p = argparse.ArgumentParser(
        prog="kubenova-openstack-api",
        description="OpenStack Compute, Image and Identity APIs over kubenova's resources.",
    )
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        doc = _docs().get(field.name, "")
        if isinstance(default, tuple):
            p.add_argument(flag, action="append", default=[], help=doc)
        elif isinstance(default, int):
            p.add_argument(flag, type=int, default=default, help=doc)
        else:
            p.add_argument(flag, default=default, help=doc)
    args = vars(p.parse_args(argv))
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return Settings(**values)


def _docs() -> dict[str, str]:
    """Each field's docstring (the text under it in this file), for ``--help``."""
    import ast  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    tree = ast.parse(inspect.getsource(Settings))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
