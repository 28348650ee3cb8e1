"""Live migration through kubenova next to plain ``virsh migrate --live`` between the same two
hosts, in the same run, alternating so both see the same machine load.

    python bench/bench_migration.py [--runs N] [--block]

kubenova: from the creation of a ServerMigration until the API server shows it Succeeded (the
controller's pre-checks, both agents' checks and preparation, the libvirt migration, reading
its statistics, cleaning the source and rebinding the Server); also until the Server is
reported ACTIVE by the target's agent. Downtime is libvirt's own figure, reported in the
ServerMigration's status.

virsh: ``virsh migrate --live --p2p --persistent --undefinesource`` of a second guest built
from the same domain XML (same kernel, memory, disks), timed around the virsh process; its
downtime from ``virsh domjobinfo --completed`` on the target.

Both guests ping-pong between host-a and host-b. By default the two hosts share their
instances folder (memory moves); ``--block`` gives each its own (the disk overlay is copied).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from typing import Any

import yaml
from kubernetes import client
from lxml import etree

from kubenova_api import constants, kube
from kubenova_devenv import stack

NS = "default"
NAME = "bench-mig"
RAW = "bench-raw"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--block", action="store_true", help="hosts without shared storage")
    args = p.parse_args()
    bed = stack.Stack(
        pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-mig-")),
        host_count=2,
        shared_instances=() if args.block else ("host-a", "host-b"),
    )
    kn_total: list[float] = []
    kn_active: list[float] = []
    kn_down: list[float] = []
    kn_data: list[int] = []
    raw_total: list[float] = []
    raw_down: list[float] = []
    with bed:
        api = client.CustomObjectsApi(kube.api_client(str(bed.cp.kubeconfig())))
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        server = {
            "apiVersion": constants.API_VERSION,
            "kind": "Server",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest", "hostName": "host-a"},
        }
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(server))
        bed.kubectl("wait", "--for=condition=Ready", f"server/{NAME}", "--timeout=120s")
        srv = api.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, NS, constants.SERVERS, NAME
        )
        uid = srv["metadata"]["uid"]
        bed.wait_console("host-a", uid, "kubenova-uptime 2")
        raw_host, overlay = make_raw_guest(bed, uid, args.block)
        time.sleep(3)  # let the raw guest boot as far as the managed one

        where = "host-a"
        for i in range(args.runs):
            target = "host-b" if where == "host-a" else "host-a"
            total, active, status = kubenova_migration(api, f"mig-{i}", target)
            kn_total.append(total)
            kn_active.append(active)
            kn_down.append(float(status["progress"]["downtimeMs"]))
            kn_data.append(int(status["progress"]["dataProcessedBytes"]))
            where = target
            raw_target = "host-b" if raw_host == "host-a" else "host-a"
            seconds, downtime = virsh_migration(bed, raw_host, raw_target, overlay)
            raw_total.append(seconds)
            raw_down.append(downtime)
            raw_host = raw_target
            print(
                f"run {i}: kubenova {total:.2f}s (ACTIVE at {active:.2f}s, downtime "
                f"{kn_down[-1]:.0f} ms) | virsh {seconds:.2f}s (downtime {downtime:.0f} ms)",
                flush=True,
            )
    k_t, r_t = statistics.median(kn_total), statistics.median(raw_total)
    k_d, r_d = statistics.median(kn_down), statistics.median(raw_down)
    mode = "block migration" if args.block else "shared storage"
    print(f"\nlive migration, {mode}, median of {args.runs} (2 cores, TCG guest, 128 MiB)")
    print(f"{'':22} {'kubenova':>10} {'virsh':>10} {'ratio':>7}")
    print(f"{'total (s)':22} {k_t:10.2f} {r_t:10.2f} {k_t / r_t:7.2f}")
    print(f"{'downtime (ms)':22} {k_d:10.0f} {r_d:10.0f} {k_d / max(r_d, 1):7.2f}")
    print(f"{'until ACTIVE again (s)':22} {statistics.median(kn_active):10.2f}")
    print(f"{'data moved (MiB)':22} {statistics.median(kn_data) / 2**20:10.1f}")
    print(
        json.dumps(
            {
                "mode": mode,
                "runs": args.runs,
                "kubenova_total_s": round(k_t, 3),
                "virsh_total_s": round(r_t, 3),
                "total_ratio": round(k_t / r_t, 2),
                "kubenova_downtime_ms": k_d,
                "virsh_downtime_ms": r_d,
                "downtime_ratio": round(k_d / max(r_d, 1), 2),
                "kubenova_until_active_s": round(statistics.median(kn_active), 3),
            }
        )
    )
    return 0


def kubenova_migration(
    api: client.CustomObjectsApi, name: str, target: str
) -> tuple[float, float, dict[str, Any]]:
    body = {
        "apiVersion": constants.API_VERSION,
        "kind": "ServerMigration",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"serverRef": NAME, "targetNode": target},
    }
    t0 = time.monotonic()
    api.create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, NS, constants.SERVERMIGRATIONS, body
    )
    total = None
    status: dict[str, Any] = {}
    while time.monotonic() - t0 < 300:
        if total is None:
            obj = api.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, NS, constants.SERVERMIGRATIONS, name
            )
            status = obj.get("status") or {}
            if status.get("phase") == "Failed":
                raise RuntimeError(f"migration {name} failed: {status}")
            if status.get("phase") == "Succeeded":
                total = time.monotonic() - t0
        if total is not None:
            srv = api.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, NS, constants.SERVERS, NAME
            )
            st = srv.get("status") or {}
            if st.get("nodeName") == target and st.get("phase") == "ACTIVE":
                return total, time.monotonic() - t0, status
        time.sleep(0.02)
    raise TimeoutError(f"migration {name} did not finish")


def make_raw_guest(bed: stack.Stack, uid: str, block: bool) -> tuple[str, list[str] | None]:
    """A guest libvirt alone manages: the managed guest's XML with a new identity, its own
    overlay over the same image, and no kubenova metadata (the agents ignore it)."""
    src = bed.hosts["host-a"]
    root = etree.fromstring(src.virsh("dumpxml", uid, "--inactive").encode())
    root.find("name").text = RAW  # type: ignore[union-attr]
    root.find("uuid").text = str(uuidlib.uuid4())  # type: ignore[union-attr]
    for tag in ("metadata", "title"):
        el = root.find(tag)
        if el is not None:
            root.remove(el)
    disk = root.find("devices/disk/source")
    assert disk is not None
    overlay_inside = f"/var/lib/kubenova/instances/{RAW}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(src.outside(str(disk.get("file"))))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    backing, size = info["backing-filename"], str(info["virtual-size"])
    create = ["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing]
    hosts = ("host-a", "host-b") if block else ("host-a",)
    for name in hosts:  # with --copy-storage-inc the target needs an empty overlay too
        subprocess.run([*create, str(bed.hosts[name].outside(overlay_inside)), size], check=True)
    disk.set("file", overlay_inside)
    serial = root.find("devices/serial/source")
    assert serial is not None
    serial.set("path", f"/var/lib/kubenova/consoles/{RAW}.log")
    xml = bed.workdir / f"{RAW}.xml"
    xml.write_bytes(etree.tostring(root))
    src.virsh("define", str(xml))
    src.virsh("start", RAW)
    return "host-a", ([*create, overlay_inside, size] if block else None)


def virsh_migration(
    bed: stack.Stack, source: str, target: str, overlay: list[str] | None
) -> tuple[float, float]:
    """One ``virsh migrate``; with ``overlay`` (the qemu-img command that makes an empty
    overlay) a block migration, after which the source gets a fresh empty overlay for the
    way back, as Nova's pre_live_migration would make it."""
    args = ["migrate", "--live", "--p2p", "--persistent", "--undefinesource"]
    if overlay is not None:
        args += ["--copy-storage-inc", "--listen-address", "127.0.0.1"]
    else:
        args += ["--unsafe"]
    args += [RAW, bed.hosts[target].uri, "--migrateuri", "tcp://127.0.0.1"]
    t0 = time.monotonic()
    bed.hosts[source].virsh(*args)
    seconds = time.monotonic() - t0
    info = bed.hosts[target].virsh("domjobinfo", RAW, "--completed")
    found = re.search(r"Total downtime:\s+(\d+)", info)
    if overlay is not None:
        *cmd, inside, size = overlay
        path = bed.hosts[source].outside(inside)
        path.unlink()
        subprocess.run([*cmd, str(path), size], check=True)
    return seconds, float(found.group(1)) if found else float("nan")


if __name__ == "__main__":
    sys.exit(main())
