"""The one place that runs the host's network tools: ``ip``, ``bridge``, ``nft``, ``sysctl`` and
``dnsmasq``. Plain iproute2 / nftables commands (``-j`` for JSON where read back) rather than a
netlink library: what the agent does is then exactly what an operator types to check it.

``netns`` runs a command inside a named network namespace (``nsenter --net``, which unlike
``ip netns exec`` leaves the mount namespace and ``/sys`` alone, so a daemon started this way
keeps the agent's view of files).

Every other command runs in the host's network namespace: the agent's own (in production the
agent's DaemonSet runs with ``hostNetwork: true``), or the one :func:`use_host_namespace`
names (the agent's ``--network-namespace``: in the test bed each host has a namespace of its
own while its agent stays where the API server's loopback is). One process serves one host's
network, so this is set once, at start-up.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

NETNS_DIR = "/run/netns"
_host_netns: str | None = None


def use_host_namespace(path: str | None) -> None:
    """Run the host's network commands in the network namespace at ``path`` (a file such as
    ``/run/netns/NAME`` or ``/proc/PID/ns/net``); None: this process's own."""
    global _host_netns  # noqa: PLW0603 - one host per process, set once at start-up
    _host_netns = path


class CommandFailed(RuntimeError):
    """A network command exited non-zero; the message names it and quotes its error."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = argv, returncode, stderr.strip()
        super().__init__(f"{' '.join(argv)}: exit {returncode}: {self.stderr}")


def _argv(argv: tuple[str, ...], netns: str | None) -> list[str]:
    if netns is not None:
        return ["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *argv]
    if _host_netns is not None:
        return ["nsenter", f"--net={_host_netns}", "--", *argv]
    return list(argv)


def run(*argv: str, netns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    """Run a command (inside ``netns`` when given); its output, or :class:`CommandFailed`."""
    full = _argv(argv, netns)
    out = subprocess.run(full, capture_output=True, text=True, input=stdin, timeout=60)
    if check and out.returncode != 0:
        raise CommandFailed(full, out.returncode, out.stderr)
    return out.stdout


def ok(*argv: str, netns: str | None = None) -> bool:
    """Whether a command succeeds (for checks such as "does this link exist")."""
    full = _argv(argv, netns)
    return subprocess.run(full, capture_output=True, timeout=60).returncode == 0


def json_of(*argv: str, netns: str | None = None) -> Any:
    """A ``-j`` command's output, parsed (an empty output is an empty list)."""
    text = run(*argv, netns=netns)
    return json.loads(text) if text.strip() else []


def sysctl(name: str, value: str, netns: str | None = None) -> None:
    """Set a sysctl of the (current or given) network namespace."""
    run("sysctl", "-q", "-w", f"{name}={value}", netns=netns)


def netns_list() -> list[str]:
    """Named network namespaces (``ip netns list``)."""
    return [entry["name"] for entry in json_of("ip", "-j", "netns", "list")]
