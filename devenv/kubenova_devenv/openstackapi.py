"""The OpenStack API facade in the local environment: its namespace, users Secret and RBAC,
the process, and the ``openrc`` / ``clouds.yaml`` a user sources to point the ``openstack``
CLI at it. Used by ``kubenova up``, the tests and the benchmarks."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import ssl
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import yaml

from kubenova_devenv import netutil

if TYPE_CHECKING:
    from kubenova_devenv import stack

NAMESPACE = "kubenova-system"
USERS_SECRET = "kubenova-openstack-users"  # noqa: S105 - a Secret's name


@dataclasses.dataclass(frozen=True)
class OpenStackUser:
    """A Keystone password user of the facade, impersonated as ``kubernetes_user``."""

    name: str
    password: str
    kubernetes_user: str
    groups: tuple[str, ...] = ()
    project: str | None = None


def install(s: stack.Stack, users: list[OpenStackUser]) -> None:
    """The facade's namespace, its Secret rights there, and the users Secret."""
    s.kubectl("create", "namespace", NAMESPACE, check=False)
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "kubenova-openstack-api-secrets", "namespace": NAMESPACE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kubenova-openstack-api-secrets",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "kubenova:openstack-api",
                }
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": USERS_SECRET, "namespace": NAMESPACE},
            "stringData": {
                "users.yaml": yaml.safe_dump(
                    [
                        {
                            "name": u.name,
                            "password": u.password,
                            "kubernetesUser": u.kubernetes_user,
                            "groups": list(u.groups),
                            **({"defaultProject": u.project} if u.project else {}),
                        }
                        for u in users
                    ]
                )
            },
        },
    ]
    s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def grant(s: stack.Stack, role: str, *, user: str, namespace: str | None = None) -> None:
    """Bind ClusterRole ``role`` to Kubernetes user ``user``, in ``namespace`` or cluster-wide."""
    name = f"{role}-{user}".replace(":", "-")
    args = ["create", "clusterrolebinding" if namespace is None else "rolebinding", name]
    args += [f"--clusterrole={role}", f"--user={user}"]
    if namespace is not None:
        args += ["-n", namespace]
    s.kubectl(*args, check=False)


def start(
    s: stack.Stack,
    *,
    port: int | None = None,
    noauth_user: str | None = None,
    noauth_groups: tuple[str, ...] = (),
    name: str = "openstack-api",
) -> tuple[stack.Proc, str]:
    """Start the facade as the ``kubenova:openstack-api`` user; returns it and its URL once
    it answers."""
    from kubenova_devenv.stack import Proc  # noqa: PLC0415 - stack imports this module

    port = port or netutil.free_port()
    argv = [
        sys.executable,
        "-m",
        "kubenova_openstack.main",
        "--kubeconfig",
        str(s.cp.kubeconfig("kubenova:openstack-api")),
        "--port",
        str(port),
        "--namespace",
        NAMESPACE,
    ]
    if noauth_user:
        argv += ["--noauth-user", noauth_user]
        for group in noauth_groups:
            argv += ["--noauth-groups", group]
    proc = Proc(name, argv, s.workdir / f"{name}.log", s.env())
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if not proc.alive:
            raise netutil.Fatal(f"{name} exited; see {proc.log_path}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    netutil.wait_until(answers, 30, f"{name} at {url}")
    return proc, url


def password_login(user: OpenStackUser, project: str) -> dict[str, Any]:
    """The body of a Keystone v3 password login of ``user``, scoped to ``project``."""
    return {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user.name, "domain": {"name": "Default"}, "password": user.password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }}  # fmt: skip


def login(
    url: str, user: OpenStackUser, project: str, *, context: ssl.SSLContext | None = None
) -> str:
    """A token of the facade at ``url`` for ``user`` in ``project`` (``X-Subject-Token``)."""
    req = urllib.request.Request(  # noqa: S310 - the facade's own http(s) URL
        f"{url}/identity/v3/auth/tokens",
        data=json.dumps(password_login(user, project)).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60, context=context) as resp:  # noqa: S310
        return str(resp.headers["X-Subject-Token"])


def cli_env(url: str, user: OpenStackUser, project: str, home: pathlib.Path) -> dict[str, str]:
    """The environment of an ``openstack`` command logged in as ``openrc`` says: this
    process's, without its ``OS_*`` variables, and ``home`` for a ``HOME`` with no
    ``~/.config/openstack`` of the machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(home)
    for line in openrc(url, user, project).splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def openrc(url: str, user: OpenStackUser, project: str) -> str:
    """A ready-to-source ``openrc`` for a Keystone v3 password login."""
    return (
        f"export OS_AUTH_URL={url}/identity/v3\n"
        "export OS_IDENTITY_API_VERSION=3\n"
        f"export OS_USERNAME={user.name}\n"
        f"export OS_PASSWORD={user.password}\n"
        f"export OS_PROJECT_NAME={project}\n"
        "export OS_USER_DOMAIN_NAME=Default\n"
        "export OS_PROJECT_DOMAIN_NAME=Default\n"
        "export OS_REGION_NAME=RegionOne\n"
        "export OS_INTERFACE=public\n"
    )


def clouds_yaml(url: str, user: OpenStackUser, project: str) -> str:
    """``clouds.yaml`` with the same login, as cloud ``kubenova``."""
    cloud = {
        "auth": {
            "auth_url": f"{url}/identity/v3",
            "username": user.name,
            "password": user.password,
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "identity_api_version": 3,
        "region_name": "RegionOne",
        "interface": "public",
    }
    return yaml.safe_dump({"clouds": {"kubenova": cloud}}, sort_keys=False)


def write_client_files(
    folder: pathlib.Path, url: str, user: OpenStackUser, project: str
) -> tuple[pathlib.Path, pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rc, clouds = folder / "openrc", folder / "clouds.yaml"
    rc.write_text(openrc(url, user, project))
    clouds.write_text(clouds_yaml(url, user, project))
    return rc, clouds
