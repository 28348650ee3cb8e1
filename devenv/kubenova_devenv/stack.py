"""The whole of kubenova on one machine, for the quickstart, the tests and the benchmarks:
a real control plane, libvirtd hosts, the guest image behind an HTTP server, the controller
and one agent per host — each a real process."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import IO, Any

import yaml

from kubenova_agent.settings import AgentSettings
from kubenova_api import config, constants
from kubenova_devenv import (
    bootdisk,
    controlplane,
    guestimage,
    imageserver,
    libvirthost,
    netbed,
    netutil,
    paths,
    scoped,
    simhost,
)
from kubenova_operator.settings import ControllerSettings

DEPLOY = paths.REPO / "deploy"
#: What an "older" host's libvirt knows: CPU models up to about 2010 (no EPYC, no Skylake).
LAN_PHYSNET = "lan"
"""With networking: the physical network of the bed's LAN (each host's LAN link)."""
OLD_CPU_MODELS = (
    "486",
    "pentium",
    "pentium2",
    "pentium3",
    "qemu32",
    "qemu64",
    "kvm32",
    "kvm64",
    "coreduo",
    "core2duo",
    "Conroe",
    "Penryn",
    "Nehalem",
    "Westmere",
)
EXAMPLES = paths.REPO / "examples"
#: The agents' ServiceAccount (namespace, name), as ``deploy/rbac/devenv-bindings.yaml`` makes it.
AGENT_SERVICE_ACCOUNT = ("kubenova-system", "kubenova-agent")


@dataclasses.dataclass
class Proc:
    """A component process with its log file."""

    name: str
    argv: list[str]
    log_path: pathlib.Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        self.stop(signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class Exited:
    """A component that exited while it should run."""

    name: str
    returncode: int | None
    log: pathlib.Path

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log at {self.log}: {exc.strerror})"
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Stack(scoped.Scoped):
    workdir: pathlib.Path
    host_count: int = 1
    virt_type: str = "qemu"
    heartbeat_seconds: float = 2.0
    heartbeat_grace_seconds: float = 20.0
    shared_instances: tuple[str, ...] = ()
    """Hosts whose instances folder (the guests' disks) is one shared folder."""
    old_cpu_hosts: tuple[str, ...] = ()
    """Hosts whose libvirt knows only older CPU models (see ``OLD_CPU_MODELS``)."""
    agent_args: tuple[str, ...] = ()
    """Extra flags for every agent (``--cpu-mode cluster``, say)."""
    networking: bool = False
    """Give every libvirt host its own network namespace on one underlay, with a LAN, a
    client and an outside (:class:`kubenova_devenv.netbed.NetBed`): libvirtd and its guests
    run inside it and migrations go to the hosts' underlay addresses (the agent stays in the
    machine's namespace, where the API server's loopback is). Off: as before."""
    net: netbed.NetBed | None = None
    cp: controlplane.ControlPlane = dataclasses.field(init=False)
    hosts: dict[str, libvirthost.LibvirtHost] = dataclasses.field(default_factory=dict)
    agents: dict[str, Proc] = dataclasses.field(default_factory=dict)
    controller: Proc | None = None
    image_server: imageserver.ImageServer | None = None
    guest: guestimage.GuestImage | None = None
    boot_disks: bootdisk.BootDisks | None = None
    extra: list[Proc] = dataclasses.field(default_factory=list)
    """Other processes started on this stack (the OpenStack API facade), stopped with it and
    watched like the components."""
    _agent_identities: set[str] = dataclasses.field(default_factory=set)
    metrics_ports: dict[str, int] = dataclasses.field(default_factory=dict)
    """Where each component started here serves its Prometheus metrics (on loopback)."""

    def __post_init__(self) -> None:
        self.cp = controlplane.ControlPlane(self.workdir / "controlplane")

    # ------------------------------------------------------------------ lifecycle
    def start(self, components: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cp.start()
        self._agent_identities.clear()  # tokens of an earlier control plane are void
        self.install()
        self.guest = guestimage.build_cached()
        served = self.workdir / "images"
        served.mkdir(exist_ok=True)
        self.boot_disks = bootdisk.build_cached(self.guest)
        for path in (self.guest.kernel, self.guest.ramdisk, self.guest.disk):
            target = served / path.name
            if not target.exists():
                shutil.copyfile(path, target)
        for path in (self.boot_disks.bios, self.boot_disks.uefi):
            target = served / f"boot-{path.name}"
            if not target.exists():
                shutil.copyfile(path, target)
        self.image_server = imageserver.ImageServer(served)
        self.image_server.start()
        if self.networking:
            self.net = netbed.NetBed()
            self.net.start()
        for i in range(self.host_count):
            name = f"host-{chr(ord('a') + i)}"
            hostnet = self.net.add_host(name) if self.net is not None else None
            host = libvirthost.LibvirtHost(
                name,
                self.workdir / name,
                migration_port_min=49152 + 64 * i,
                shared=(
                    {"/var/lib/kubenova/instances": self.workdir / "shared-instances"}
                    if name in self.shared_instances
                    else {}
                ),
                cpu_models=OLD_CPU_MODELS if name in self.old_cpu_hosts else None,
                netns=hostnet.netns if hostnet is not None else None,
                underlay_address=str(hostnet.underlay_address) if hostnet is not None else None,
            )
            self.hosts[name] = host  # known before it starts: stop() must find it
            host.start()
        if components:
            self.start_controller()
            for name in self.hosts:
                self.start_agent(name)

    def stop(self) -> None:
        """Stop everything that was started, guests included; one part failing to stop does
        not keep the others running."""
        steps: list[Callable[[], None]] = [proc.stop for proc in self.extra]
        steps += [proc.stop for proc in self.agents.values()]
        if self.controller is not None:
            steps.append(self.controller.stop)
        if self.net is not None:
            steps += [
                functools.partial(self.teardown_networks, name)
                for name, host in self.hosts.items()
                if host.running
            ]
        steps += [host.stop for host in self.hosts.values()]
        if self.net is not None:
            steps.append(self.net.stop)
        if self.image_server is not None:
            steps.append(self.image_server.stop)
        steps.append(self.cp.stop)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def exited(self) -> Exited | None:
        """The first component that should run and does not: etcd, kube-apiserver, a
        libvirtd, the controller or an agent (how ``kubenova up`` notices within seconds)."""
        for name, popen, log in self.cp.processes():
            if popen.poll() is not None:
                return Exited(name, popen.returncode, log)
        for host in self.hosts.values():
            code = host.returncode
            if code is not None:
                return Exited(f"libvirtd of {host.name}", code, host.root / "libvirtd.out")
        procs = [self.controller] if self.controller is not None else []
        for proc in [*procs, *self.agents.values(), *self.extra]:
            if proc.popen is not None and proc.popen.poll() is not None:
                return Exited(proc.name, proc.popen.returncode, proc.log_path)
        return None

    def install(self) -> None:
        """CRDs, RBAC and the admission policies (the agents' per-node ones, and the checks of
        what users submit), applied with kubectl as a user would."""
        self.kubectl("apply", "-f", str(DEPLOY / "crds"))
        self.kubectl("apply", "-f", str(DEPLOY / "rbac"))
        self.kubectl("apply", "-f", str(DEPLOY / "policies"))
        self.kubectl("apply", "-f", str(DEPLOY / "admission"))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.wait_servers_admitted()

    def wait_servers_admitted(self, timeout: float = 60.0) -> None:
        """Wait until the API server's admission can take a Server.

        A CRD says Established before every part of the API server knows its schema: the
        MutatingAdmissionPolicy that gives Servers their finalizer needs the schema from the
        API server's OpenAPI, which follows a moment later, and until then a Server's create is
        refused with 503 ("Resource kind ... not found. There can be a delay between when
        CustomResourceDefinitions are created and when they are available"), whatever the
        policy's failurePolicy. A user's first ``kubectl apply`` right after the install would
        get that, so the install is only done when a server-side dry run of a Server gets any
        other answer (a dry run is admitted like a real create and stores nothing)."""
        probe = {
            "apiVersion": constants.API_VERSION,
            "kind": "Server",
            "metadata": {"name": "kubenova-install-probe", "namespace": "default"},
            "spec": {"flavorRef": "probe", "imageRef": "probe"},
        }
        manifest = yaml.safe_dump(probe)
        deadline = time.monotonic() + timeout
        while True:
            out = self.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-",
                               stdin=manifest, check=False)  # fmt: skip
            if out.returncode == 0 or "There can be a delay" not in out.stderr:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Servers not admitted {timeout:.0f}s after the install: "
                                   f"{out.stderr.strip()}")  # fmt: skip
            time.sleep(0.2)

    def agent_kubeconfig(self, host_name: str) -> pathlib.Path:
        """Credentials of the agent of ``host_name`` that name its node, as a pod's do in a
        cluster: a token of the agents' ServiceAccount bound to the Node object ``host_name``
        (made here: no kubelet registers it), which carries the node's name to the admission
        policies (``deploy/policies``). Made once per host and start of the control plane (a
        token names the Node object's UID: one left in a reused work folder is void)."""
        path = self.cp.workdir / f"kubeconfig-agent-{host_name}"
        if host_name in self._agent_identities:
            return path
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": host_name}}
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(node))
        token = self.kubectl(
            "create", "token", AGENT_SERVICE_ACCOUNT[1], "-n", AGENT_SERVICE_ACCOUNT[0],
            "--bound-object-kind=Node", f"--bound-object-name={host_name}", "--duration=48h",
        ).stdout.strip()  # fmt: skip
        controlplane.write_kubeconfig(
            path, self.cp.url, self.cp.workdir / "pki" / "ca.crt", f"agent-{host_name}", token
        )
        self._agent_identities.add(host_name)
        return path

    # ------------------------------------------------------------------ components
    def env(self) -> dict[str, str]:
        """The environment of every component process."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def controller_settings(self) -> ControllerSettings:
        """The controller's settings in this bed (its flags are generated from them)."""
        return ControllerSettings(
            kubeconfig=str(self.cp.kubeconfig("kubenova:controller")),
            heartbeat_grace_seconds=self.heartbeat_grace_seconds,
            resync_seconds=5.0,
            metrics_address=self._metrics_address("controller"),
        )

    def _metrics_address(self, component: str) -> str:
        port = self.metrics_ports.get(component) or netutil.free_port()
        self.metrics_ports[component] = port
        return f"127.0.0.1:{port}"

    def metrics(self, component: str) -> str:
        """What ``component`` (``controller``, ``agent-<host>``) serves at ``/metrics`` now."""
        url = f"http://127.0.0.1:{self.metrics_ports[component]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    def start_controller(self, settings: ControllerSettings | None = None) -> Proc:
        cfg = settings or self.controller_settings()
        proc = Proc(
            "controller",
            [sys.executable, "-m", "kubenova_operator.main", *config.to_args(cfg)],
            self.workdir / "controller.log",
            self.env(),
        )
        self.controller = proc
        proc.start()
        return proc

    def image_sources(self, cfg: AgentSettings) -> AgentSettings:
        """``cfg`` with the agents' explicit opt-in to this bed's image server: by default an
        agent refuses loopback sources and ports other than 80/443 (kubenova_api.imagesource)."""
        if self.image_server is None:
            return cfg
        return dataclasses.replace(
            cfg,
            image_permitted_networks="127.0.0.1/32",
            image_allowed_ports=str(self.image_server.port),
        )

    def agent_settings(self, host_name: str) -> AgentSettings:
        """The settings of the agent of libvirtd host ``host_name`` in this bed."""
        host = self.hosts[host_name]
        cfg = AgentSettings(
            host_name=host_name,
            libvirt_uri="qemu:///system",
            virt_type=self.virt_type,
            kubeconfig=str(self.agent_kubeconfig(host_name)),
            heartbeat_seconds=self.heartbeat_seconds,
            resync_seconds=30.0,
            peer_libvirt_uri=host.uri,
            migration_address=self.migration_address(host_name),
            metrics_address=self._metrics_address(f"agent-{host_name}"),
        )
        cfg = self.image_sources(cfg)
        if self.net is None:
            return cfg
        hostnet = self.net.hosts[host_name]
        # The host's tunnel address is its underlay address; its LAN link is mapped as
        # physical network LAN_PHYSNET; its network commands run in its own namespace.
        return dataclasses.replace(
            cfg,
            tunnel_address=str(hostnet.underlay_address),
            tunnel_device=hostnet.underlay_device,
            physical_interface_mappings=f"{LAN_PHYSNET}:{hostnet.lan_device}",
            network_namespace=f"/proc/{host.pid}/ns/net",
        )

    def teardown_networks(self, host_name: str) -> None:
        """Remove every kubenova network of a host (its dnsmasqs, namespaces, devices), as
        the agent's ``python -m kubenova_agent.network teardown`` does: the agent itself
        leaves them running when it stops (a restarted agent must not cut its guests off)."""
        assert self.net is not None
        cfg = self.agent_settings(host_name)
        hostnet = self.net.hosts[host_name]
        host = self.hosts[host_name]
        desired = {
            "host": {
                "host_name": host_name,
                "underlay_device": hostnet.underlay_device,
                "underlay_address": str(hostnet.underlay_address),
                "interface_mappings": cfg.interface_mappings,
                "state_dir": cfg.network_dir,
            },
            "plans": [],
        }
        path = self.workdir / f"network-teardown-{host_name}.json"
        path.write_text(json.dumps(desired))
        # Converging is retried, as the agent's own loop does (a dnsmasq that is still exiting
        # can hold a namespace a moment); a failure that stays is raised with what it said.
        for attempt in range(3):
            out = subprocess.run(
                [*host.nsenter(), sys.executable, "-m", "kubenova_agent.network", "teardown",
                 str(path)],
                check=False, capture_output=True, text=True, timeout=120, env=self.env(),
            )  # fmt: skip
            if out.returncode == 0:
                return
            print(
                f"tearing down {host_name}'s networks, try {attempt + 1}: exit {out.returncode}: "
                f"{out.stderr.strip()[-2000:]}",
                file=sys.stderr,
            )
            time.sleep(1 + attempt)
        raise RuntimeError(
            f"tearing down {host_name}'s networks failed (exit {out.returncode}): "
            f"{(out.stderr or out.stdout).strip()[-3000:]}"
        )

    def start_agent(self, host_name: str, extra_args: tuple[str, ...] = ()) -> Proc:
        host = self.hosts[host_name]
        proc = Proc(
            f"agent-{host_name}",
            [
                # With networking the agent stays in the machine's network namespace: the API
                # server and the image server listen on its loopback. (libvirtd is reached by
                # its socket; the host's network commands name the host's namespace.)
                *host.nsenter(net=False),
                sys.executable,
                "-m",
                "kubenova_agent.main",
                *config.to_args(self.agent_settings(host_name)),
                *self.agent_args,
                *extra_args,
            ],
            self.workdir / f"agent-{host_name}.log",
            self.env(),
        )
        self.agents[host_name] = proc
        proc.start()
        return proc

    def migration_address(self, host_name: str) -> str:
        """Where migration data to a host goes: its underlay address, or loopback."""
        if self.net is None:
            return "127.0.0.1"
        return str(self.net.hosts[host_name].underlay_address)

    def stop_agents(self, *names: str) -> None:
        """Stop the agents of these hosts that this bed still runs (a test's teardown, whatever
        the test got to)."""
        for name in names:
            agent = self.agents.pop(name, None)
            if agent is not None:
                agent.stop()

    def start_sim_agent(
        self, name: str, cpus: int = 8, memory_mib: int = 16384, extra_args: tuple[str, ...] = ()
    ) -> Proc:
        """An agent for a simulated host on libvirt's test driver (no daemon, no guests run);
        ``extra_args`` are flags given after (and so over) the bed's own."""
        root = self.workdir / name
        uri = simhost.write_host_file(root / "host.xml", cpus=cpus, memory_mib=memory_mib)
        cfg = AgentSettings(
            host_name=name,
            libvirt_uri=uri,
            virt_type="test",
            state_dir=str(root / "state"),
            kubeconfig=str(self.agent_kubeconfig(name)),
            heartbeat_seconds=self.heartbeat_seconds,
            reserved_memory_mib=0,
            resync_seconds=30.0,
            metrics_address=self._metrics_address(f"agent-{name}"),
        )
        cfg = self.image_sources(cfg)
        proc = Proc(
            f"agent-{name}",
            [sys.executable, "-m", "kubenova_agent.main", *config.to_args(cfg), *extra_args],
            self.workdir / f"agent-{name}.log",
            self.env(),
        )
        self.agents[name] = proc
        proc.start()
        return proc

    def fleet_image_flags(self) -> list[str]:
        """simfleet's flags for the agents' opt-in to this bed's image server."""
        if self.image_server is None:
            return []
        cfg = self.image_sources(AgentSettings())
        return [
            "--image-permitted-networks",
            cfg.image_permitted_networks,
            "--image-allowed-ports",
            cfg.image_allowed_ports,
        ]

    def start_sim_fleet(
        self,
        hosts: int,
        cpus: int = 8,
        memory_mib: int = 16384,
        heartbeat: float = 10.0,
        networks: bool = False,
        *,
        prefix: str = "sim",
        name: str = "simfleet",
        shared_watches: bool = False,
        nice: int = 0,
    ) -> Proc:
        """``hosts`` simulated hosts, each a real Agent on the test driver, in one process
        named ``name`` (its log: ``<name>.log``), the hosts named ``<prefix>-000`` and on
        (with ``networks``: each publishes a tunnel address and physical network ``lan``, so
        Servers on networks can be placed there; nothing is plumbed; with ``shared_watches``:
        simfleet's one watch per kind for all its hosts, see its ``--shared-watches``; with
        ``nice``: at that CPU priority, below the control plane's, as agents on hosts of their
        own would take none of its CPU).

        They share one identity (``kubenova:fleet``, the agents' ClusterRole without the
        per-node admission policies): minting a Node and a token for each of a thousand
        simulated hosts would be most of a scale benchmark's start-up."""
        proc = Proc(
            name,
            [
                *(["nice", "-n", str(nice)] if nice else []),
                sys.executable,
                "-m",
                "kubenova_devenv.simfleet",
                "--hosts",
                str(hosts),
                "--prefix",
                prefix,
                "--cpus",
                str(cpus),
                "--memory-mib",
                str(memory_mib),
                "--kubeconfig",
                str(self.cp.kubeconfig("kubenova:fleet")),
                "--workdir",
                str(self.workdir / "fleet"),
                "--heartbeat-seconds",
                str(heartbeat),
                *(["--networks"] if networks else []),
                *(["--shared-watches"] if shared_watches else []),
                *self.fleet_image_flags(),
            ],
            self.workdir / f"{name}.log",
            self.env(),
        )
        self.agents[name] = proc  # stopped with the bed, watched by exited()
        proc.start()
        return proc

    # ------------------------------------------------------------------ helpers
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        user: str = "admin",
        stdin: str | None = None,
        timeout: float = 120,
        kubeconfig: pathlib.Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as ``user`` of the control plane (or with ``kubeconfig``)."""
        kc = kubeconfig or self.cp.kubeconfig(user)
        argv = [str(kubectl_binary()), "--kubeconfig", str(kc), *args]
        out = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "yaml"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args, check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise RuntimeError(out.stderr)
        data: dict[str, Any] = yaml.safe_load(out.stdout)
        return data

    def image_manifest(
        self,
        name: str = "kubenova-guest",
        with_disk: bool = True,
        kernel_sha: str | None = None,
        slow: bool = False,
        architecture: str = "x86_64",
    ) -> dict[str, Any]:
        """The example Image, pointing at the local image server with real checksums.
        ``slow`` serves it slowly; ``kernel_sha`` overrides the kernel's checksum."""
        assert self.guest is not None and self.image_server is not None
        g, srv = self.guest, self.image_server
        uec: dict[str, Any] = {
            "kernel": {
                "url": srv.url("vmlinuz", slow),
                "sha256": kernel_sha or g.sha256(g.kernel),
            },
            "ramdisk": {"url": srv.url("initrd.img", slow), "sha256": g.sha256(g.ramdisk)},
            "cmdline": "console=ttyS0 quiet",
        }
        if with_disk:
            uec["disk"] = {
                "url": srv.url("disk.qcow2", slow),
                "sha256": g.sha256(g.disk),
                "format": "qcow2",
            }
        return {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Image",
            "metadata": {"name": name},
            "spec": {"source": {"uec": uec}, "minMemoryMiB": 64, "architecture": architecture},
        }

    def boot_disk_manifest(
        self, firmware: str, name: str | None = None, **properties: str
    ) -> dict[str, Any]:
        """An Image of the test guest as a disk with its own boot loader: ``bios`` (SYSLINUX)
        or ``uefi`` (GRUB), with that ``hw_firmware_type`` and any other ``properties``."""
        assert self.boot_disks is not None and self.image_server is not None
        path = self.boot_disks.bios if firmware == "bios" else self.boot_disks.uefi
        return {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Image",
            "metadata": {"name": name or f"kubenova-guest-{firmware}"},
            "spec": {
                "source": {
                    "disk": {
                        "url": self.image_server.url(f"boot-{path.name}"),
                        "sha256": guestimage.sha256_of(path),
                        "format": "qcow2",
                    }
                },
                # OVMF and GRUB need room to load the 14 MiB kernel: GRUB runs out of memory
                # in 128 MiB.
                "minMemoryMiB": 256 if firmware == "uefi" else 64,
                "properties": {"hw_firmware_type": firmware, **properties},
            },
        }

    def disk_variant(self, tag: str) -> tuple[str, str]:
        """A new qcow2 disk image, served as ``disk-<tag>.qcow2``, whose first bytes read
        ``KUBENOVA-DISK-<tag>``; returns its file name and SHA-256. Unique content means a
        cache miss on every host."""
        assert self.image_server is not None
        served = self.workdir / "images"
        raw = served / f".disk-{tag}.raw"
        raw.write_bytes(f"KUBENOVA-DISK-{tag}\n".encode().ljust(1 << 20, b"\0"))
        name = f"disk-{tag}.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(served / name)],
            check=True,
        )
        raw.unlink()
        return name, guestimage.sha256_of(served / name)

    def console(self, host_name: str, uid: str) -> str:
        path = self.hosts[host_name].outside(f"/var/lib/kubenova/consoles/{uid}.log")
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, host_name: str, uid: str, text: str, timeout: float = 60) -> str:
        netutil.wait_until(
            lambda: text in self.console(host_name, uid),
            timeout,
            f"{text!r} on the console of {uid} on {host_name}",
        )
        return self.console(host_name, uid)


def kubectl_binary() -> pathlib.Path:
    """The kubectl built with the control plane, else the one on PATH."""
    built = paths.bin_dir() / "kubectl"
    if built.exists():
        return built
    return pathlib.Path("kubectl")
