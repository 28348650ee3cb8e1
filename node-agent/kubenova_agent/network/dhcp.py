"""One dnsmasq per network on each host that runs the network's guests, inside the network's
namespace, answering DHCP only for the MACs of this host's guests (``--dhcp-ignore=tag:!known``:
a request from any other MAC, say a guest on another host of the same VXLAN, is left to that
host's dnsmasq) with the router, DNS and MTU options. No DNS service (``--port=0``).

Static leases live in a hosts file that dnsmasq re-reads on SIGHUP: a guest arriving or
leaving is a rewrite and a signal, not a restart. A change of anything else (the subnet, the
options) restarts it. Its files are under ``<state_dir>/<key>/``.
"""

from __future__ import annotations

import enum
import os
import pathlib
import signal
import time

from kubenova_agent.network import cmd, types

LEASE_TIME = "12h"


class Outcome(enum.StrEnum):
    unchanged = "unchanged"
    reloaded = "reloaded"
    started = "started"


def folder(host: types.HostConfig, key: str) -> pathlib.Path:
    return host.state_dir / "dhcp" / key


def hosts_text(plan: types.NetworkPlan) -> str:
    """The static leases: ``mac,ip[,hostname]`` per local guest, in a stable order."""
    lines = []
    for port in sorted(plan.ports, key=lambda p: p.mac):
        parts = [port.mac, str(port.ip)] + ([port.hostname] if port.hostname else [])
        lines.append(",".join(parts))
    return "".join(line + "\n" for line in lines)


def argv(plan: types.NetworkPlan, where: pathlib.Path) -> list[str]:
    """dnsmasq's command line for ``plan`` with its files in ``where``."""
    net = plan.subnet.cidr
    options = [f"--dhcp-option=option:mtu,{plan.guest_mtu}"]
    if plan.subnet.gateway is not None:
        options.append(f"--dhcp-option=option:router,{plan.subnet.gateway}")
    else:
        options.append("--dhcp-option=option:router")  # none: do not offer the server's address
    if plan.subnet.dns:
        options.append("--dhcp-option=option:dns-server," + ",".join(map(str, plan.subnet.dns)))
    return [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        f"--interface={types.NS_PORT}",
        "--except-interface=lo",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        f"--dhcp-range=set:net,{net.network_address},static,{net.netmask},{LEASE_TIME}",
        "--dhcp-ignore=tag:!known",
        "--dhcp-authoritative",
        f"--dhcp-hostsfile={where / 'hosts'}",
        f"--dhcp-leasefile={where / 'leases'}",
        f"--pid-file={where / 'pid'}",
        f"--log-facility={where / 'log'}",
        "--log-dhcp",
        *options,
    ]


def pid_of(where: pathlib.Path) -> int | None:
    """The pid of the dnsmasq that serves from ``where``, if it runs."""
    try:
        pid = int((where / "pid").read_text().strip())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dnsmasq" in cmdline and str(where).encode() in cmdline else None


def ensure(host: types.HostConfig, plan: types.NetworkPlan) -> Outcome:
    """dnsmasq of ``plan`` runs in the network's namespace and knows exactly its ports."""
    where = folder(host, plan.key)
    where.mkdir(parents=True, exist_ok=True)
    want_argv = "\0".join(argv(plan, where))
    want_hosts = hosts_text(plan)
    pid = pid_of(where)
    hosts_file, argv_file = where / "hosts", where / "argv"
    same_argv = argv_file.exists() and argv_file.read_text() == want_argv
    if pid is not None and same_argv:
        if hosts_file.read_text() == want_hosts:
            return Outcome.unchanged
        _write(hosts_file, want_hosts)
        os.kill(pid, signal.SIGHUP)
        return Outcome.reloaded
    if pid is not None:
        _stop_pid(pid)
    _write(hosts_file, want_hosts)
    _write(argv_file, want_argv)
    (where / "pid").unlink(missing_ok=True)
    cmd.run(*argv(plan, where), netns=host.netns(plan.key))
    return Outcome.started


def stop(host: types.HostConfig, key: str) -> bool:
    """Stop the dnsmasq of network ``key`` and remove its files; whether one ran."""
    where = folder(host, key)
    pid = pid_of(where)
    if pid is not None:
        _stop_pid(pid)
    for name in ("hosts", "argv", "pid", "leases", "log"):
        (where / name).unlink(missing_ok=True)
    if where.exists():
        where.rmdir()
    return pid is not None


def served_keys(host: types.HostConfig) -> list[str]:
    """Networks that have a dnsmasq folder on this host."""
    base = host.state_dir / "dhcp"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def _write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pathlib.Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
