"""The host programs the agent runs, checked once at start-up.

An agent whose ``qemu-img`` is missing would judge every disk image invalid, and one whose
``dnsmasq`` is missing would boot guests that never get an address; both only show up later,
one Server at a time, as errors that blame the wrong thing. So the agent looks for each program
it will run before it starts any work and, if one is missing, says which and which Debian
package brings it, and exits non-zero (a pod then shows it in its log and restarts with
back-off, instead of running half-broken).

:data:`REQUIRED` is also what the image's Dockerfile must install (a unit test holds the two
together).
"""

from __future__ import annotations

import dataclasses
import os
import shutil


@dataclasses.dataclass(frozen=True)
class Tool:
    program: str
    package: str  # the Debian package that brings it
    why: str
    networking: bool = False  # needed only when the agent plumbs the host's network


REQUIRED: tuple[Tool, ...] = (
    Tool("qemu-img", "qemu-utils", "inspects every downloaded image, makes the guests' disks"),
    Tool("prlimit", "util-linux", "runs qemu-img under resource limits"),
    Tool("ip", "iproute2", "makes bridges, VXLAN devices and addresses", networking=True),
    Tool("bridge", "iproute2", "keeps the VXLAN forwarding entries", networking=True),
    Tool("nft", "nftables", "isolates tenant networks and does their SNAT", networking=True),
    Tool("sysctl", "procps", "turns on IP forwarding for egress", networking=True),
    Tool("dnsmasq", "dnsmasq-base", "serves DHCP on each tenant network", networking=True),
    Tool("nsenter", "util-linux", "runs DHCP servers in their namespaces", networking=True),
)

SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing(*, networking: bool, path: str | None = None) -> list[Tool]:
    """The tools not found on ``path`` (this process's PATH plus the sbin folders)."""
    search = path if path is not None else f"{os.environ.get('PATH', '')}:{SEARCH_PATH}"
    return [
        t
        for t in REQUIRED
        if (networking or not t.networking) and shutil.which(t.program, path=search) is None
    ]


def describe(tools: list[Tool]) -> str:
    """One line per missing tool: what it is for and the package to install."""
    return "; ".join(f"{t.program} (Debian package {t.package}: {t.why})" for t in tools)
