"""Simulated hypervisor hosts: one libvirtd (+ virtlogd) per host, each in its own mount
namespace with its own state, configuration and host UUID.

Inside a host's namespace, per-host folders are bind-mounted over ``/run/libvirt``,
``/var/lib/libvirt``, ``/etc/libvirt``, ``/var/log/libvirt``, ``/var/cache/libvirt`` and
``/var/lib/kubenova``; the agent of that host runs in the same namespace (as a DaemonSet pod with
the host's paths mounted would), so paths mean the same to it and to libvirtd.

A host can also live in a real node's namespaces (``ns_pid``, see ``node``): its bind mounts
are then the node's own, so the kubelet gives the agent's pod the socket and state folder as
hostPath volumes, and its PID files hold PIDs of the node's PID namespace.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import uuid
from typing import IO

from kubenova_devenv import netutil, nsutil

#: inside path -> folder name under the host's directory
BIND_MOUNTS: dict[str, str] = {
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/etc/libvirt": "etc",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
    "/var/lib/kubenova": "kubenova",
}

CPU_MAP = "/usr/share/libvirt/cpu_map"

_LAUNCH = r"""
set -eu
H="$1"
shift
while [ "$#" -ge 2 ]; do
    mkdir -p "$1"
    mount --bind "$H/$2" "$1"
    shift 2
done
# After a libvirtd crash its virtlogd still runs (and keeps the guests' logs): reuse it.
virtlogd -d -p /run/libvirt/virtlogd.pid || echo "virtlogd runs already"
exec libvirtd -p /run/libvirt/libvirtd.pid
"""


@dataclasses.dataclass
class LibvirtHost:
    """A libvirtd "host" rooted at ``root``; ``uri`` reaches it from outside its namespace."""

    name: str
    root: pathlib.Path
    migration_port_min: int = 49152
    host_uuid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    shared: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)
    """Inside path -> a folder outside that other hosts mount too (shared storage)."""
    cpu_models: tuple[str, ...] | None = None
    """When set, this host's libvirt knows only these x86 CPU models (its CPU map lacks the
    others), as an older libvirt would: for refusing guests whose CPU the host cannot run."""
    ns_pid: int | None = None
    """A process of a real node (its PID here): libvirtd then starts in that node's mount,
    network and PID namespaces instead of a mount namespace of its own."""
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def socket(self) -> pathlib.Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "host not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """libvirtd's exit status once it has exited (None while it runs or before start)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def log(self) -> pathlib.Path:
        """libvirtd's own log (its start-up errors are in ``libvirtd.out`` beside it)."""
        return self.root / "log" / "libvirtd.log"

    def guest_pids(self) -> list[int]:
        """PIDs of the QEMU processes of this host's guests that still run (from libvirt's pid
        files, checked against the process's command line)."""
        pids = []
        for pid_file in (self.root / "run" / "qemu").glob("*.pid"):
            try:
                pid = self._pid_here(int(pid_file.read_text().strip()))
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"qemu" in cmdline:
                pids.append(pid)
        return pids

    def _pid_here(self, written: int) -> int:
        """A PID from one of libvirt's pid files, as seen from here (-1 if not found)."""
        if self.ns_pid is None:
            return written
        pid = nsutil.outer_pid(written, self.ns_pid)
        return -1 if pid is None else pid

    def _mounts(self) -> dict[str, str]:
        """Inside path -> folder (or link to a folder) under the host's root, parents first."""
        mounts = dict(BIND_MOUNTS)
        for i, inside in enumerate(self.shared):
            mounts[inside] = f"shared-{i}"
        if self.cpu_models is not None:
            mounts[CPU_MAP] = "cpu_map"
        return mounts

    def outside(self, inside_path: str) -> pathlib.Path:
        """Where a path seen inside the host's namespace is, seen from outside."""
        for inside, folder in self.shared.items():
            if inside_path == inside or inside_path.startswith(inside + "/"):
                return folder / inside_path[len(inside) :].lstrip("/")
        for inside, name in BIND_MOUNTS.items():
            if inside_path == inside or inside_path.startswith(inside + "/"):
                return self.root / name / inside_path[len(inside) :].lstrip("/")
        return pathlib.Path(inside_path)

    def nsenter(self) -> list[str]:
        """A command prefix that runs a program in this host's mount namespace."""
        return ["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", "--"]

    def start(self, timeout: float = 60.0) -> None:
        self._prepare()
        if self._log is not None:  # started again after a crash
            self._log.close()
        mounts = [arg for inside, name in self._mounts().items() for arg in (inside, name)]
        self._log = (self.root / "libvirtd.out").open("ab")
        if self.ns_pid is not None:
            enter = ["nsenter", "-t", str(self.ns_pid), "-m", "-n", "-p", "--"]
        else:
            enter = ["unshare", "-m", "--propagation", "private"]
        self._proc = subprocess.Popen(
            [
                *enter,
                "bash",
                "-c",
                _LAUNCH,
                "launch",
                str(self.root),
                *mounts,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        netutil.wait_until(self._ready, timeout, f"libvirtd of host {self.name}")

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise netutil.Fatal(f"libvirtd of {self.name} exited; see {self.root}/libvirtd.out")
        if not self.socket.exists():
            return False
        out = subprocess.run(
            ["virsh", "-c", self.uri, "uri"], capture_output=True, text=True, timeout=10
        )
        return out.returncode == 0

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run ``virsh`` against this host and return its output."""
        out = subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)} on {self.name}: {out.stderr.strip()}")
        return out.stdout

    def has_domain(self, uuid_or_name: str) -> bool:
        """Whether the host has that domain, defined or running."""
        out = subprocess.run(
            ["virsh", "-c", self.uri, "dominfo", uuid_or_name], capture_output=True, timeout=60
        )
        return out.returncode == 0

    def stop(self, destroy_domains: bool = True) -> None:
        """Stop libvirtd and virtlogd; with ``destroy_domains`` no QEMU is left running."""
        if self._proc is None:
            return
        if destroy_domains and self._proc.poll() is None:
            for dom in self.virsh("list", "--name", check=False).split():
                self.virsh("destroy", dom, check=False)
        if self._proc.poll() is None:
            # In a node's PID namespace, nsenter waits for libvirtd but passes no signal on:
            # libvirtd itself is signalled.
            libvirtd = self._own_pid("libvirtd.pid") if self.ns_pid is not None else None
            if libvirtd is None:
                self._proc.terminate()
            else:
                os.kill(libvirtd, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                if libvirtd is not None:
                    os.kill(libvirtd, signal.SIGKILL)
                self._proc.wait()
        virtlogd = self._own_pid("virtlogd.pid")
        if virtlogd is not None:
            try:
                os.kill(virtlogd, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if destroy_domains:
            # Guests outlive a libvirtd that died or was killed: stop them by their pid files.
            for pid in self.guest_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _own_pid(self, name: str) -> int | None:
        """The PID (here) in ``run/<name>``, if that file names a live process."""
        try:
            pid = self._pid_here(int((self.root / "run" / name).read_text().strip()))
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None

    def kill(self) -> None:
        """Kill libvirtd abruptly (a crash); QEMU processes survive, as on a real host."""
        if self._proc is not None and self._proc.poll() is None:
            libvirtd = self._own_pid("libvirtd.pid") if self.ns_pid is not None else None
            if libvirtd is not None:
                os.kill(libvirtd, signal.SIGKILL)
            self._proc.kill()
            self._proc.wait()

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in BIND_MOUNTS.values():
            (self.root / name).mkdir(exist_ok=True)
        etc = self.root / "etc"
        if not (etc / "libvirtd.conf").exists() and pathlib.Path("/etc/libvirt").is_dir():
            shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        # The default NAT network needs dnsmasq and a bridge; hosts here need neither.
        for autostart in (etc / "qemu" / "networks" / "autostart").glob("*.xml"):
            autostart.unlink()
        (etc / "libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\n'
            'unix_sock_group = "root"\n'
            'unix_sock_rw_perms = "0770"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        )
        (etc / "qemu.conf").write_text(
            'user = "root"\n'
            'group = "root"\n'
            "dynamic_ownership = 0\n"
            "remember_owner = 0\n"
            'security_driver = "none"\n'
            f"migration_port_min = {self.migration_port_min}\n"
            f"migration_port_max = {self.migration_port_min + 63}\n"
        )
        for i, folder in enumerate(self.shared.values()):
            folder.mkdir(parents=True, exist_ok=True)
            link = self.root / f"shared-{i}"
            link.unlink(missing_ok=True)
            link.symlink_to(folder)
        if self.cpu_models is not None:
            _restricted_cpu_map(self.root / "cpu_map", self.cpu_models)
        for sub in ("log/qemu", "lib/qemu", "run/qemu"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


def _restricted_cpu_map(target: pathlib.Path, models: tuple[str, ...]) -> None:
    """A copy of libvirt's CPU map whose x86 part lists only ``models`` (features, vendors and
    the other architectures stay as they are)."""
    from lxml import etree  # noqa: PLC0415 - only hosts with a restricted map need it

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(CPU_MAP, target)
    index = etree.parse(str(target / "index.xml"))
    for arch in index.getroot().iter("arch"):
        if arch.get("name") != "x86":
            continue
        for include in list(arch.iter("include")):
            name = str(include.get("filename", ""))
            model = name.removeprefix("x86_").removesuffix(".xml")
            if name in ("x86_vendors.xml", "x86_features.xml") or model in models:
                continue
            parent = include.getparent()
            if parent is not None:
                parent.remove(include)
    index.write(str(target / "index.xml"))
