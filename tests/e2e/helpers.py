"""Helpers for the end-to-end tests: manifests and looks at the hosts."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from kubenova_devenv import netutil, stack


def server(
    name: str, namespace: str, flavor: str = "m1.tiny", image: str = "kubenova-guest", **spec: Any
) -> str:
    body = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"flavorRef": flavor, "imageRef": image, **spec},
    }
    return yaml.safe_dump(body)


def flavor(name: str, vcpus: int = 1, memory: int = 128, disk: int = 1) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Flavor",
            "metadata": {"name": name},
            "spec": {"vcpus": vcpus, "memoryMiB": memory, "diskGiB": disk},
        }
    )


def apply(bed: stack.Stack, text: str) -> None:
    bed.kubectl("apply", "-f", "-", stdin=text)


def wait_ready(bed: stack.Stack, namespace: str, name: str) -> subprocess.CompletedProcess[str]:
    """``kubectl wait --for=condition=Ready`` on a Server, as a user would."""
    return bed.kubectl(
        "wait",
        "--for=condition=Ready",
        f"server/{name}",
        "-n",
        namespace,
        "--timeout=120s",
        timeout=150,
    )


def domains_for(bed: stack.Stack, namespace: str, name: str) -> list[tuple[str, str]]:
    """(host, domain UUID) of every domain, running or not, on every host, that belongs to
    Server namespace/name (by the title kubenova gives its domains)."""
    found = []
    for host_name, host in bed.hosts.items():
        for uuid in host.virsh("list", "--all", "--uuid").split():
            title = host.virsh("desc", uuid, "--title", check=False).strip()
            if title == f"{namespace}/{name}":
                found.append((host_name, uuid))
    return found


def volumes_for(bed: stack.Stack, uid: str) -> list[tuple[str, str]]:
    found = []
    for host_name, host in bed.hosts.items():
        listing = host.virsh("vol-list", "kubenova", check=False)
        found += [
            (host_name, line.split()[0])
            for line in listing.splitlines()
            if line.strip().startswith(uid)
        ]
    return found


def boots(console: str) -> int:
    """How many times the guest has booted, by its marker on the console."""
    from kubenova_devenv import guestimage  # noqa: PLC0415

    return console.count(guestimage.MARKER)


def last_uptime(console: str) -> float:
    """The guest's last uptime line on the console (its own clock, in seconds)."""
    lines = [ln for ln in console.splitlines() if ln.startswith("kubenova-uptime ")]
    return float(lines[-1].split()[1]) if lines else -1.0


def patch(bed: stack.Stack, namespace: str, name: str, spec: dict[str, Any]) -> None:
    bed.kubectl(
        "patch",
        "server",
        name,
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": spec}),
    )


def migrate(bed: stack.Stack, namespace: str, name: str, server_name: str, **spec: Any) -> None:
    """Ask for a ServerMigration of ``server_name`` (``targetNode=…``, …)."""
    body = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "ServerMigration",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serverRef": server_name, **spec},
    }
    apply(bed, yaml.safe_dump(body))


def migration_done(
    bed: stack.Stack, namespace: str, name: str, timeout: float = 180
) -> dict[str, Any]:
    """The ServerMigration once it has ended (Succeeded or Failed)."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found.update(bed.get("servermigration", name, namespace) or {})
        return (found.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    netutil.wait_until(ended, timeout, f"ServerMigration {name} to end")
    return found


# Guest and client snippets of the network e2e tests: fetch a URL from a client namespace, and
# a user-data script whose reach NAME IP TRIES pings a peer until it answers.
FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)

REACH = """#!/bin/sh
reach() {
    n=0
    while [ $n -lt "$3" ]; do
        if ping -c 1 -W 1 "$2" >/dev/null 2>&1; then
            echo "kubenova-reach $1 ok after $n"; return 0
        fi
        n=$((n+1)); sleep 1
    done
    echo "kubenova-reach $1 fail after $n"; return 1
}
"""


def events(bed: stack.Stack, namespace: str, kind: str, name: str) -> list[tuple[str, str]]:
    """The Events about one object, as (reason, message)."""
    out = bed.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind={kind},involvedObject.name={name}",
        "-o",
        "json",
    )
    return [(e["reason"], e["message"]) for e in json.loads(out.stdout)["items"]]
