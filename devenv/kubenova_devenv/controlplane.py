"""A real Kubernetes control plane on loopback: etcd plus kube-apiserver (envtest's pattern).

RBAC is on and clients authenticate with static bearer tokens: an admin in ``system:masters``
and one user per kubenova component, bound to the ClusterRoles in ``deploy/rbac/``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import IO

import yaml

from kubenova_devenv import netutil, paths

#: Users with a static token: name -> groups. The component users get RBAC from deploy/rbac.
#: Agents of single hosts do not use these: each gets a token naming its node
#: (``Stack.agent_kubeconfig``); ``kubenova:fleet`` is a process of many simulated hosts.
USERS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "kubenova:controller": ("kubenova:controllers",),
    "kubenova:fleet": ("kubenova:fleets",),
    "kubenova:openstack-api": ("kubenova:openstack-api",),
    # People with no rights of their own (tests and the quickstart grant them some).
    "alice": ("tenants",),
    "bob": ("tenants",),
}


@dataclasses.dataclass
class ControlPlane:
    """etcd + kube-apiserver in ``workdir``; ``start()`` returns once ``/readyz`` answers."""

    workdir: pathlib.Path
    apiserver_port: int = 0
    etcd_port: int = 0
    _procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    _names: list[str] = dataclasses.field(default_factory=list)
    _logs: list[IO[bytes]] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def token(self, user: str) -> str:
        return f"kubenova-devenv-{user.replace(':', '-')}-token"

    def kubeconfig(self, user: str = "admin") -> pathlib.Path:
        """Path of a kubeconfig that authenticates as ``user``."""
        return self.workdir / f"kubeconfig-{user.replace(':', '-')}"

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.apiserver_port = self.apiserver_port or netutil.free_port()
        self.etcd_port = self.etcd_port or netutil.free_port()
        self._write_pki()
        self._write_tokens_and_kubeconfigs()
        etcd_data = self.workdir / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)
        peer_port = netutil.free_port()
        self._spawn(
            "etcd",
            [
                str(paths.binary("etcd")),
                f"--data-dir={etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        pki = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(paths.binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
            ],
        )
        try:
            netutil.wait_until(self._ready, timeout, "kube-apiserver /readyz")
        except BaseException:
            self.stop()
            raise

    def processes(self) -> list[tuple[str, subprocess.Popen[bytes], pathlib.Path]]:
        """Name, process and log file of each component started (etcd, kube-apiserver)."""
        return [
            (name, proc, self.workdir / f"{name}.log")
            for name, proc in zip(self._names, self._procs, strict=True)
        ]

    def _ready(self) -> bool:
        for name, proc, log in self.processes():
            if proc.poll() is not None:
                raise netutil.Fatal(f"{name} exited with {proc.returncode}; see {log}")
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(  # noqa: S310 - https on loopback
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token('admin')}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()  # not ready yet (500 while post-start hooks run)
            return False

    def stop(self) -> None:
        # One at a time, kube-apiserver first: it exits in about a second while etcd still
        # answers, but retries a stopped etcd until it is killed 15 s later.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self._names.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        # A session of its own: a Ctrl-C in the terminal reaches whoever supervises the control
        # plane, which stops it in order, and not etcd and kube-apiserver behind its back.
        self._procs.append(
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        self._names.append(name)

    def _write_pki(self) -> None:
        write_pki(self.workdir / "pki")

    def _write_tokens_and_kubeconfigs(self) -> None:
        lines = []
        for i, (user, groups) in enumerate(USERS.items()):
            group_field = '"' + ",".join(groups) + '"'
            lines.append(f"{self.token(user)},{user},uid-{i},{group_field}")
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")
        ca = self.workdir / "pki" / "ca.crt"
        for user in USERS:
            write_kubeconfig(self.kubeconfig(user), self.url, ca, user, self.token(user))


#: Names and addresses the API server's certificate is valid for (in-cluster ones included).
SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "IP:10.96.0.1",
)


def _openssl(pki: pathlib.Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)


def write_pki(pki: pathlib.Path, extra_sans: tuple[str, ...] = ()) -> None:
    """A CA, the API server's serving certificate (``SANS`` + ``extra_sans``) and the
    service-account signing key pair, unless ``pki`` has them already."""
    if (pki / "apiserver.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(pki, "genrsa", "-out", "ca.key", "2048")
    _openssl(
        pki, "req", "-x509", "-new", "-key", "ca.key", "-days", "3650",
        "-subj", "/CN=kubenova-devenv-ca", "-out", "ca.crt",
    )  # fmt: skip
    (pki / "san.ext").write_text(
        f"subjectAltName={','.join((*SANS, *extra_sans))}\nextendedKeyUsage=serverAuth\n"
    )
    _signed(pki, "apiserver", "/CN=kube-apiserver", "san.ext")
    _openssl(pki, "genrsa", "-out", "sa.key", "2048")
    _openssl(pki, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def write_client_cert(pki: pathlib.Path, name: str, subject: str) -> None:
    """``name.crt``/``name.key``: a client certificate for ``subject`` signed by the CA."""
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _signed(pki, name, subject, "client.ext")


def _signed(pki: pathlib.Path, name: str, subject: str, extfile: str) -> None:
    _openssl(pki, "genrsa", "-out", f"{name}.key", "2048")
    _openssl(pki, "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
    _openssl(
        pki, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-extfile", extfile, "-out", f"{name}.crt",
    )  # fmt: skip


def write_kubeconfig(
    path: pathlib.Path, server: str, ca: pathlib.Path, user: str, token: str
) -> None:
    """A kubeconfig that reaches ``server`` as ``user`` with a bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubenova", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kubenova", "context": {"cluster": "kubenova", "user": user}}],
        "current-context": "kubenova",
    }
    path.write_text(yaml.safe_dump(config))
