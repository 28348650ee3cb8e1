"""A real single-node Kubernetes on this machine, for the Helm chart's end-to-end tests: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet with containerd + runc and
the CNI bridge, kube-proxy, and a libvirtd for the agent's pod.

Everything runs inside mount, network and PID namespaces of the node's own, whose PID 1 is a
small reaper: killing it makes the kernel kill everything inside, and the namespaces vanish
with their mounts, network devices and firewall rules. What the kubelet, containerd and CNI
write under ``/run``, ``/var/lib`` and ``/var/log`` lands in the node's folders (a tmpfs and
bind mounts); the host-wide sysctls the kubelet insists on setting are files of the node's
own bound over ``/proc/sys``. The only things outside are the node's cgroups, under a root
named per run (``kubenova-node-<token>``, so that two runs coexist), removed at the end.

The node's address (``NODE_IP``) is on a veth pair whose peer is a dead end: nothing leaves
the namespace. kubectl and helm outside reach the API server through a loopback port
forwarded into it. No image can be pulled: the pause image and kubenova's image are built
here (``containerimage``) and imported into containerd.

See ``../shared/docs/environment.md`` ("A real node") for why each odd setting is there:
cgroup v1 (hybrid) with cgroupfs, ``restrict_oom_score_adj`` (root lacks CAP_SYS_RESOURCE),
the kubelet's ``volumePluginDir``, ServiceAccount admission, ``Node,RBAC`` and
``NodeRestriction``, the wait for the ``default`` ServiceAccount.

    python -m kubenova_devenv.node WORKDIR     # a node until Ctrl-C; prints its KUBECONFIG
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import yaml

from kubenova_devenv import (
    containerimage,
    controlplane,
    guestimage,
    imageserver,
    libvirthost,
    netutil,
    nsutil,
    paths,
    scoped,
)

NAME = "kubenova-node"
NODE_IP = "10.99.0.1"
API_PORT = 6443
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
#: Users with a static token (Kubernetes' own component identities): name -> groups.
USERS: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "system:kube-controller-manager": (),
    "system:kube-scheduler": (),
    f"system:node:{NAME}": ("system:nodes",),
    "system:kube-proxy": (),
}
#: The sysctls the kubelet sets (host-wide ones: it gets files of its own instead).
FAKE_SYSCTLS = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}

_REAPER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""

_SETUP = r"""
set -eu
W="$1"
ip link set lo up
# The node's address, on a veth whose peer is a dead end: nothing leaves the namespace.
ip link add kn0 type veth peer name kn1
ip addr add "$2/24" dev kn0
ip link set kn0 up
ip link set kn1 up
ip route add default via "$3" dev kn0
# What the machine has mounted under /run/netns (other beds' namespaces) is not the node's, and
# would shadow the node's own /run/netns for containerd's mount lookup (it takes the first).
umount --recursive --lazy /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/containerd /run/lock
# /run/netns shared, as on a systemd host (whose mounts are all shared): network namespaces
# made in a pod that mounts it with Bidirectional propagation (the agent's, with
# agent.networking.enabled) then appear on the node and outlive the pod.
mount --bind /run/netns /run/netns
mount --make-shared /run/netns
mount --bind "$W/var/lib" /var/lib
mount --bind "$W/var/log" /var/log
for f in vm/overcommit_memory kernel/panic kernel/panic_on_oops; do
    mount --bind "$W/sysctl/${f#*/}" "/proc/sys/$f"
done
"""


@dataclasses.dataclass
class Node(scoped.Scoped):
    """A single-node cluster in ``workdir``; ``start()`` returns once the node is Ready and
    pods can be admitted; ``stop()`` leaves nothing running and nothing outside ``workdir``."""

    workdir: pathlib.Path
    images: tuple[pathlib.Path, ...] = ()
    """Image archives imported into containerd while the control plane starts."""
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    """Makes this run's global names (the cgroup root) unique."""
    libvirt: libvirthost.LibvirtHost | None = None
    init_pid: int = 0
    """The node's PID 1, as seen from here."""
    forwarder: nsutil.Forwarder | None = None
    started_seconds: float = 0.0
    _unshare: subprocess.Popen[bytes] | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    _logs: list[IO[bytes]] = dataclasses.field(default_factory=list)
    _servers: list[imageserver.ImageServer] = dataclasses.field(default_factory=list)

    @property
    def cgroup_root(self) -> str:
        return f"kubenova-node-{self.token}"

    @property
    def pki(self) -> pathlib.Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> pathlib.Path:
        """The admin's kubeconfig for programs outside the node (through the forwarder)."""
        return self.workdir / "kubeconfig"

    def _inside_kubeconfig(self, user: str) -> pathlib.Path:
        return self.workdir / f"kubeconfig-{user.replace(':', '-')}"

    @staticmethod
    def _token(user: str) -> str:
        return f"kubenova-node-{user.replace(':', '-')}-token"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 240.0) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "var/lib", "var/log", "sysctl", "pod-logs", "cni/net.d", "cni/ipam"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for name, value in FAKE_SYSCTLS.items():
            (self.workdir / "sysctl" / name.split("/")[1]).write_text(value + "\n")
        self._write_pki_and_configs()
        pause = containerimage.pause_image()
        self._enter_namespaces()
        self._make_cgroups()
        self.forwarder = nsutil.Forwarder(self.init_pid, "127.0.0.1", API_PORT).start()
        self._write_outside_kubeconfig()
        self._start_components_before_api()
        self._wait(self._containerd_ready, 60, "containerd")
        self.import_image(pause.archive)
        failed: list[BaseException] = []

        def import_images() -> None:
            try:
                for archive in self.images:
                    self.import_image(archive)
            except BaseException as exc:
                failed.append(exc)

        importing = threading.Thread(target=import_images, name="ctr-import")
        importing.start()
        self._wait(self._api_ready, timeout, "kube-apiserver /readyz")
        self._start_components_after_api()
        self.libvirt = libvirthost.LibvirtHost(NAME, self.workdir / "libvirt", ns_pid=self.init_pid)
        self.libvirt.start()
        self._wait(self._node_ready, timeout, f"node {NAME} Ready")
        self._wait(
            lambda: self.kubectl("get", "sa", "default", check=False).returncode == 0,
            timeout,
            "the default ServiceAccount (pods are refused until it exists)",
        )
        importing.join()
        if failed:
            raise failed[0]
        self.started_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Guests destroyed through libvirt (which then removes their cgroups), then the
        node's PID 1 ended (the kernel kills everything inside), then its cgroups removed."""
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self.libvirt is not None:
            with contextlib.suppress(Exception):
                self.libvirt.stop(destroy_domains=True)
        if self.init_pid and self._unshare is not None and self._unshare.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGTERM)
            try:
                self._unshare.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # the nsenter processes end with their programs
        if self.forwarder is not None:
            self.forwarder.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()
        self._remove_cgroups()

    # ------------------------------------------------------------------ namespaces, cgroups
    def _enter_namespaces(self) -> None:
        log = (self.workdir / "logs" / "init.log").open("ab")
        self._logs.append(log)
        self._unshare = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                sys.executable,
                "-c",
                _REAPER,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        children = pathlib.Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")

        def forked() -> bool:
            if self._unshare is not None and self._unshare.poll() is not None:
                raise netutil.Fatal("unshare exited; see logs/init.log")
            text = children.read_text().split()
            self.init_pid = int(text[0]) if text else 0
            return bool(self.init_pid)

        netutil.wait_until(forked, 10, "the node's PID 1")
        # The route needs a gateway on the node's subnet; .254 is nobody (a dead end).
        gateway = NODE_IP.rsplit(".", 1)[0] + ".254"
        subprocess.run(
            [*self.enter(), "bash", "-c", _SETUP, "setup", str(self.workdir), NODE_IP, gateway],
            check=True,
            capture_output=True,
        )

    def enter(self) -> list[str]:
        """A command prefix that runs a program inside the node's namespaces."""
        return ["nsenter", "-t", str(self.init_pid), "-m", "-n", "-p", "--"]

    def _cgroup_dirs(self) -> list[pathlib.Path]:
        """The node's cgroup root in every cgroup v1 hierarchy (and the v2 one of a hybrid)."""
        roots = {p.resolve() for p in pathlib.Path("/sys/fs/cgroup").iterdir() if p.is_dir()}
        return sorted(root / self.cgroup_root for root in roots)

    def _make_cgroups(self) -> None:
        for d in self._cgroup_dirs():
            d.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset starts empty
                if (d / name).exists() and not (d / name).read_text().strip():
                    (d / name).write_text((d.parent / name).read_text())

    def _remove_cgroups(self) -> None:
        """Empty cgroups go (children first); a cgroup still holding a process stays, and
        says so, rather than being forced."""
        left = []
        for d in self._cgroup_dirs():
            if not d.exists():
                continue
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
        if left:
            print(f"node: cgroups not removed (still in use?): {left}", file=sys.stderr)

    # ------------------------------------------------------------------ configuration
    def _write_pki_and_configs(self) -> None:
        controlplane.write_pki(self.pki, extra_sans=(f"IP:{NODE_IP}",))
        if not (self.pki / "kubelet-client.crt").exists():
            controlplane.write_client_cert(
                self.pki, "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
            )
        lines = []
        for i, (user, groups) in enumerate(USERS.items()):
            group_field = f',"{",".join(groups)}"' if groups else ""
            lines.append(f"{self._token(user)},{user},uid-{i}{group_field}")
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")
        for user in USERS:
            controlplane.write_kubeconfig(
                self._inside_kubeconfig(user),
                f"https://127.0.0.1:{API_PORT}",
                self.pki / "ca.crt",
                user,
                self._token(user),
            )
        w = self.workdir
        (w / "containerd.toml").write_text(_containerd_config(w))
        (w / "cni" / "net.d" / "10-kubenova.conflist").write_text(_cni_config(w))
        (w / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (w / "kube-proxy.yaml").write_text(yaml.safe_dump(self._proxy_config()))

    def _write_outside_kubeconfig(self) -> None:
        assert self.forwarder is not None
        controlplane.write_kubeconfig(
            self.kubeconfig,
            f"https://127.0.0.1:{self.forwarder.port}",
            self.pki / "ca.crt",
            "admin",
            self._token("admin"),
        )

    def _kubelet_config(self) -> dict[str, Any]:
        w = self.workdir
        sock = f"unix://{w / 'containerd' / 'containerd.sock'}"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",  # no systemd here
            "cgroupRoot": f"/{self.cgroup_root}",
            "cgroupsPerQOS": True,
            "failCgroupV1": False,  # the host is cgroup v1 (hybrid)
            "failSwapOn": False,
            "containerRuntimeEndpoint": sock,
            "imageServiceEndpoint": sock,
            "podLogsDir": str(w / "pod-logs"),
            "staticPodPath": "",
            "address": NODE_IP,
            "port": 10250,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            # Images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "enforceNodeAllocatable": ["pods"],
            "serializeImagePulls": False,
            "protectKernelDefaults": False,
            "volumePluginDir": str(w / "kubelet" / "volume-plugins"),
        }

    def _proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._inside_kubeconfig("system:kube-proxy"))},
            "mode": "iptables",
            "hostnameOverride": NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "clusterCIDR": POD_CIDR,
            # conntrack settings are host-wide: leave them alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }

    # ------------------------------------------------------------------ components
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        self._logs.append(log)
        self._procs[name] = subprocess.Popen(
            [*self.enter(), *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _start_components_before_api(self) -> None:
        w, pki, bins = self.workdir, self.pki, paths.binary
        self._spawn("containerd", ["containerd", "--config", str(w / "containerd.toml")])
        self._spawn(
            "etcd",
            [
                str(bins("etcd")),
                f"--data-dir={w / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(bins("kube-apiserver")),
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--token-auth-file={w / 'tokens.csv'}",
                # The kubelet may touch only its own node and its pods' objects.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",  # no DNS for the node's name
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
            ],
        )

    def _start_components_after_api(self) -> None:
        w, pki, bins = self.workdir, self.pki, paths.binary
        self._spawn(
            "kube-controller-manager",
            [
                str(bins("kube-controller-manager")),
                f"--kubeconfig={self._inside_kubeconfig('system:kube-controller-manager')}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                "--leader-elect=false",
                f"--flex-volume-plugin-dir={w / 'kcm-volume-plugins'}",
                "--bind-address=127.0.0.1",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(bins("kube-scheduler")),
                f"--kubeconfig={self._inside_kubeconfig('system:kube-scheduler')}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )
        self._spawn(
            "kubelet",
            [
                str(bins("kubelet")),
                f"--config={w / 'kubelet.yaml'}",
                f"--kubeconfig={self._inside_kubeconfig(f'system:node:{NAME}')}",
                f"--root-dir={w / 'kubelet' / 'root'}",
                f"--hostname-override={NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy", [str(bins("kube-proxy")), f"--config={w / 'kube-proxy.yaml'}", "--v=1"]
        )

    def exited(self) -> tuple[str, pathlib.Path] | None:
        """The first component that exited (name, log), if any."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                return name, self.workdir / "logs" / f"{name}.log"
        return None

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        def checked() -> bool:
            gone = self.exited()
            if gone is not None:
                tail = "\n".join(gone[1].read_text(errors="replace").splitlines()[-15:])
                raise netutil.Fatal(f"{gone[0]} exited while waiting for {what}:\n{tail}")
            return bool(check())

        netutil.wait_until(checked, timeout, what, step=0.3)

    def _containerd_ready(self) -> bool:
        return (self.workdir / "containerd" / "containerd.sock").exists()

    def _api_ready(self) -> bool:
        assert self.forwarder is not None
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.forwarder.port}/readyz",
            headers={"Authorization": f"Bearer {self._token('admin')}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return out.stdout.strip() == "True"

    # ------------------------------------------------------------------ use
    def import_image(self, archive: pathlib.Path) -> float:
        """Import an image archive into the node's containerd (as the kubelet's images);
        returns the seconds it took."""
        started = time.monotonic()
        subprocess.run(
            [
                "ctr",
                "--address",
                str(self.workdir / "containerd" / "containerd.sock"),
                "-n",
                "k8s.io",
                "images",
                "import",
                str(archive),
            ],
            check=True,
            capture_output=True,
        )
        return time.monotonic() - started

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(paths.binary("kubectl")), "--kubeconfig", str(self.kubeconfig), *args]
        out = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [str(paths.binary("helm")), "--kubeconfig", str(self.kubeconfig), *args]
        env = {**os.environ, "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache")}
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def serve(self, directory: pathlib.Path, port: int = 0) -> imageserver.ImageServer:
        """An HTTP server of ``directory`` on the node's loopback (what a hostNetwork pod
        reaches as ``127.0.0.1``)."""
        with nsutil.in_netns(self.init_pid):
            server = imageserver.ImageServer(directory, port)
        server.start()
        self._servers.append(server)
        return server

    def guest_image(
        self, name: str = "kubenova-guest", port: int = 0
    ) -> tuple[dict[str, Any], pathlib.Path]:
        """The test guest served on the node's loopback (on ``port``, if given); its Image
        object and the folder served."""
        guest = guestimage.build_cached()
        served = self.workdir / "images"
        served.mkdir(exist_ok=True)
        for path in (guest.kernel, guest.ramdisk, guest.disk):
            target = served / path.name
            if not target.exists():
                target.write_bytes(path.read_bytes())
        server = self.serve(served, port)

        def ref(path: pathlib.Path) -> dict[str, str]:
            return {"url": server.url(path.name), "sha256": guest.sha256(path)}

        disk = {**ref(guest.disk), "format": "qcow2"}
        uec = {"kernel": ref(guest.kernel), "ramdisk": ref(guest.ramdisk), "disk": disk}
        manifest = {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Image",
            "metadata": {"name": name},
            "spec": {
                "source": {"uec": {**uec, "cmdline": "console=ttyS0 quiet"}},
                "minMemoryMiB": 64,
                "architecture": "x86_64",
            },
        }
        return manifest, served

    def console(self, uid: str) -> str:
        """The serial console of a guest of the node's libvirt."""
        assert self.libvirt is not None
        path = self.libvirt.outside(f"/var/lib/kubenova/consoles/{uid}.log")
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def processes(self) -> list[int]:
        """Every process of the node (PIDs as seen here): those started with nsenter are its
        children, the daemons that detached were adopted by its PID 1."""
        if not self.init_pid:
            return []
        entered = [p.pid for p in self._procs.values()]
        if self.libvirt is not None and self.libvirt.running:
            entered.append(self.libvirt.pid)
        return [p for p in nsutil.descendants(self.init_pid, *entered) if p not in entered]

    def rss_bytes(self) -> int:
        """Memory the node's processes hold (their resident sets added up)."""
        return sum(nsutil.rss_bytes(pid) for pid in self.processes())


def _containerd_config(w: pathlib.Path) -> str:
    return f"""version = 2
root = "{w / "containerd" / "root"}"
state = "{w / "containerd" / "state"}"
oom_score = 0

[grpc]
  address = "{w / "containerd" / "containerd.sock"}"

[ttrpc]
  address = "{w / "containerd" / "containerd.sock.ttrpc"}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{w / "containerd" / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{containerimage.PAUSE_REF}"
  enable_selinux = false
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{w / "cni" / "net.d"}"
"""


def _cni_config(w: pathlib.Path) -> str:
    subnet, gateway = POD_CIDR, POD_CIDR.rsplit(".", 1)[0] + ".1"
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "kubenova",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(w / "cni" / "ipam"),
                        "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


@contextlib.contextmanager
def running(workdir: pathlib.Path) -> Iterator[Node]:
    node = Node(workdir)
    with node:
        yield node


def main() -> int:
    workdir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "kubenova-node").resolve()
    with running(workdir) as node:
        print(f"node {NAME} Ready in {node.started_seconds:.1f}s; KUBECONFIG={node.kubeconfig}")
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        signal.sigwait(signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
