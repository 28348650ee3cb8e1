"""N Servers created at once against many simulated hosts (one process of real Agents on
libvirt's test driver): time until all are ACTIVE, create->ACTIVE percentiles, binding rate,
API writes per Server (from the API server's own request metrics), memory of the controller
and of the agents.

    python bench/bench_scale.py --hosts 100 --servers 100 [--servers 1000 ...]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import pathlib
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import yaml
from kubernetes import client, watch

from kubenova_api import constants, kube
from kubenova_devenv import netutil, stack

WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def writes_by_resource(bed: stack.Stack) -> collections.Counter[str]:
    """apiserver_request_total for write verbs, per resource/subresource."""
    ctx = ssl.create_default_context(cafile=str(bed.cp.workdir / "pki" / "ca.crt"))
    req = urllib.request.Request(
        f"{bed.cp.url}/metrics", headers={"Authorization": f"Bearer {bed.cp.token('admin')}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    out: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in WRITE_VERBS:
            key = labels.get("resource", "") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            out[key] += int(float(line.rsplit(" ", 1)[1]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(bed: stack.Stack, n: int, namespace: str) -> dict[str, Any]:
    api_client = kube.api_client(str(bed.cp.kubeconfig()))
    custom = client.CustomObjectsApi(api_client)
    bed.kubectl("create", "namespace", namespace)
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    active: dict[str, float] = {}
    rv = custom.list_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.SERVERS
    )["metadata"]["resourceVersion"]
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(
            custom.list_namespaced_custom_object,
            constants.GROUP,
            constants.VERSION,
            namespace,
            constants.SERVERS,
            resource_version=rv,
            timeout_seconds=900,
        ):
            obj = event["object"]
            name, status = obj["metadata"]["name"], obj.get("status") or {}
            now = time.monotonic()
            if status.get("nodeName") and name not in bound:
                bound[name] = now
            if status.get("phase") == "ACTIVE" and name not in active:
                active[name] = now
                if len(active) == n:
                    w.stop()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    before = writes_by_resource(bed)
    started = time.monotonic()

    def create(i: int) -> None:
        name = f"s{i:04d}"
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            namespace,
            constants.SERVERS,
            {
                "apiVersion": constants.API_VERSION,
                "kind": "Server",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"flavorRef": "bench.tiny", "imageRef": "bench-image"},
            },
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    follower.join(timeout=900)
    finished = time.monotonic()
    time.sleep(1)  # let the last writes land in the metrics
    after = writes_by_resource(bed)
    delta = after - before
    lat = [active[k] - created[k] for k in active]
    binds = sorted(bound.values())
    return {
        "servers": n,
        "active": len(active),
        "all_active_s": finished - started,
        "p50_s": percentile(lat, 50),
        "p95_s": percentile(lat, 95),
        "p99_s": percentile(lat, 99),
        "binds_per_s": len(binds) / max(1e-6, binds[-1] - binds[0]) if len(binds) > 1 else 0,
        "writes_per_server": {
            k: round(v / n, 2)
            for k, v in sorted(delta.items())
            if k.startswith(("servers", "events"))
        },
        "other_writes": {
            k: v for k, v in sorted(delta.items()) if not k.startswith(("servers", "events"))
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--servers", type=int, action="append")
    args = p.parse_args()
    sizes = args.servers or [100]
    bed = stack.Stack(
        pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-scale-")),
        host_count=0,
        heartbeat_grace_seconds=120,
    )
    results = []
    with bed:
        bed.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": constants.API_VERSION,
                    "kind": "Flavor",
                    "metadata": {"name": "bench.tiny"},
                    "spec": {"vcpus": 1, "memoryMiB": 64, "diskGiB": 1},
                }
            ),
        )
        # The test driver boots nothing: a tiny kernel and ramdisk keep 100 hosts' first
        # fetches (one per host) from dominating what is measured: scheduling and spawning.
        served = bed.workdir / "images"
        files = {}
        for name in ("tiny-kernel", "tiny-ramdisk"):
            (served / name).write_bytes(name.encode() * 64)
            files[name] = {
                "url": bed.image_server.url(name),  # type: ignore[union-attr]
                "sha256": hashlib.sha256((served / name).read_bytes()).hexdigest(),
            }
        image = {"kernel": files["tiny-kernel"], "ramdisk": files["tiny-ramdisk"]}
        bed.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": constants.API_VERSION,
                    "kind": "Image",
                    "metadata": {"name": "bench-image"},
                    "spec": {"architecture": "i686", "source": {"uec": image}},
                }
            ),
        )
        fleet = bed.start_sim_fleet(args.hosts, cpus=16, memory_mib=65536)
        netutil.wait_until(
            lambda: bed.kubectl("get", "hv", "-o", "name").stdout.count("\n") >= args.hosts,
            300,
            f"{args.hosts} Hypervisors",
        )
        time.sleep(12)  # every host heartbeats at least once with its capacity
        for i, n in enumerate(sizes):
            result = run(bed, n, f"scale-{i}")
            assert bed.controller is not None and bed.controller.popen is not None
            assert fleet.popen is not None
            result["controller_rss_mib"] = round(rss_mib(bed.controller.popen.pid), 1)
            result["fleet_rss_mib"] = round(rss_mib(fleet.popen.pid), 1)
            result["per_agent_rss_mib"] = round(result["fleet_rss_mib"] / args.hosts, 2)
            results.append(result)
            print(yaml.safe_dump(result, sort_keys=False), flush=True)
    print(f"{'servers':>8} {'all ACTIVE':>11} {'p50':>7} {'p95':>7} {'p99':>7} {'binds/s':>8}")
    for r in results:
        print(
            f"{r['servers']:8d} {r['all_active_s']:10.2f}s {r['p50_s']:6.2f}s "
            f"{r['p95_s']:6.2f}s {r['p99_s']:6.2f}s {r['binds_per_s']:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
