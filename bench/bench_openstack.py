"""The OpenStack API facade's cost, measured against kubenova's own path in the same run.

1. ``openstack server create --wait`` next to ``kubectl apply`` + ``kubectl wait
   --for=condition=Ready`` of the same Server, alternately, on one real libvirtd + QEMU host:
   wall time of each, each checked on libvirt (the domain runs) before it counts.
2. ``GET /v2.1/servers/detail`` latency (p50, p99) with N Servers (1,000 by default) in one
   namespace, on simulated hosts (libvirt's test driver); each answer must list all N servers,
   ACTIVE. Next to it, the same listing straight from the API server (``kubectl get``'s
   request), the facade's floor.

    python bench/bench_openstack.py [--runs 5] [--servers 1000] [--requests 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import yaml

from kubenova_api import constants
from kubenova_devenv import netutil, openstackapi, stack

USER = openstackapi.OpenStackUser("bench", "bench-secret", "alice")
OPENSTACK = pathlib.Path(sys.executable).parent / "openstack"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def facade(bed: stack.Stack) -> str:
    openstackapi.install(bed, [USER])
    openstackapi.grant(bed, "kubenova-openstack-admin", user=USER.kubernetes_user)
    proc, url = openstackapi.start(bed)
    bed.extra.append(proc)
    return url


def cli_env(url: str, project: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    for line in openstackapi.openrc(url, USER, project).splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def running_on(bed: stack.Stack, uid: str) -> bool:
    return any(
        host.virsh("domstate", uid, check=False).strip() == "running" for host in bed.hosts.values()
    )


# ----------------------------------------------------------------------------- create


def bench_create(runs: int) -> dict[str, Any]:
    bed = stack.Stack(pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-os-")), host_count=1)
    with bed:
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("create", "namespace", "bench")
        url = facade(bed)
        env = cli_env(url, "bench")
        cli, k8s = [], []
        for i in range(runs + 1):  # the first round warms the image cache; not counted
            t0 = time.monotonic()
            out = subprocess.run(
                [str(OPENSTACK), "server", "create", "--flavor", "m1.tiny", "--image",
                 "kubenova-guest", "--wait", "-f", "json", f"os-{i}"],
                env=env, capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            took_cli = time.monotonic() - t0
            uid = json.loads(out.stdout)["id"]
            assert running_on(bed, uid), f"os-{i}: no running domain {uid}"
            t0 = time.monotonic()
            manifest = {
                "apiVersion": constants.API_VERSION,
                "kind": "Server",
                "metadata": {"name": f"k8s-{i}", "namespace": "bench"},
                "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest"},
            }
            bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
            bed.kubectl("wait", "--for=condition=Ready", f"server/k8s-{i}", "-n", "bench",
                        "--timeout=300s", timeout=320)  # fmt: skip
            took_k8s = time.monotonic() - t0
            got = bed.get("server", f"k8s-{i}", "bench")
            assert got is not None and running_on(bed, got["metadata"]["uid"])
            if i:
                cli.append(took_cli)
                k8s.append(took_k8s)
            print(f"run {i}: openstack --wait {took_cli:.2f}s, kubectl apply+wait {took_k8s:.2f}s")
            subprocess.run(
                [str(OPENSTACK), "server", "delete", "--wait", uid],
                env=env, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            bed.kubectl("delete", "server", f"k8s-{i}", "-n", "bench", "--timeout=120s")
    return {
        "openstack_create_wait_p50_s": round(percentile(cli, 50), 2),
        "kubectl_apply_wait_p50_s": round(percentile(k8s, 50), 2),
        "ratio": round(percentile(cli, 50) / percentile(k8s, 50), 2),
        "runs": runs,
    }


# ----------------------------------------------------------------------------- list


def bench_detail(servers: int, requests: int, hosts: int) -> dict[str, Any]:
    bed = stack.Stack(
        pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-os-detail-")),
        host_count=0,
        heartbeat_grace_seconds=120,
    )
    with bed:
        flavor = {
            "apiVersion": constants.API_VERSION,
            "kind": "Flavor",
            "metadata": {"name": "bench.tiny"},
            "spec": {"vcpus": 1, "memoryMiB": 64, "diskGiB": 1},
        }
        served = bed.workdir / "images"
        files = {}
        for name in ("tiny-kernel", "tiny-ramdisk"):
            (served / name).write_bytes(name.encode() * 64)
            files[name] = {
                "url": bed.image_server.url(name),  # type: ignore[union-attr]
                "sha256": hashlib.sha256((served / name).read_bytes()).hexdigest(),
            }
        image = {
            "apiVersion": constants.API_VERSION,
            "kind": "Image",
            "metadata": {"name": "bench-image"},
            "spec": {
                "architecture": "i686",
                "source": {
                    "uec": {"kernel": files["tiny-kernel"], "ramdisk": files["tiny-ramdisk"]}
                },
            },
        }
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([flavor, image]))
        bed.start_sim_fleet(hosts, cpus=64, memory_mib=262144)
        netutil.wait_until(
            lambda: bed.kubectl("get", "hv", "-o", "name").stdout.count("\n") >= hosts,
            300,
            f"{hosts} Hypervisors",
        )
        time.sleep(12)
        bed.kubectl("create", "namespace", "many")
        docs = [
            {
                "apiVersion": constants.API_VERSION,
                "kind": "Server",
                "metadata": {"name": f"s{i:04d}", "namespace": "many"},
                "spec": {"flavorRef": "bench.tiny", "imageRef": "bench-image"},
            }
            for i in range(servers)
        ]
        for start in range(0, servers, 200):
            bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs[start : start + 200]))

        def all_active() -> bool:
            out = bed.kubectl("get", "servers", "-n", "many", "-o",
                              "jsonpath={.items[*].status.phase}", timeout=120)  # fmt: skip
            return out.stdout.split().count("ACTIVE") == servers

        netutil.wait_until(all_active, 900, f"{servers} servers ACTIVE", step=2.0)
        url = facade(bed)
        _, headers, _ = _post(
            f"{url}/identity/v3/auth/tokens",
            {"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": USER.name, "password": USER.password, "domain": {"name": "Default"}}}},
                "scope": {"project": {"name": "many"}}}},
        )  # fmt: skip
        token = headers["X-Subject-Token"]
        facade_lat = []
        for _ in range(requests):
            t0 = time.monotonic()
            listing = _get(
                f"{url}/v2.1/servers/detail",
                {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.88"},
            )
            facade_lat.append(time.monotonic() - t0)
            shown = listing["servers"]
            assert len(shown) == servers, len(shown)
            assert {s["status"] for s in shown} == {"ACTIVE"}
        ctx = ssl.create_default_context(cafile=str(bed.cp.workdir / "pki" / "ca.crt"))
        raw_lat = []
        path = f"/apis/{constants.GROUP}/{constants.VERSION}/namespaces/many/servers"
        for _ in range(requests):
            t0 = time.monotonic()
            auth = {"Authorization": f"Bearer {bed.cp.token('alice')}"}
            raw = _get(bed.cp.url + path, auth, ctx)
            raw_lat.append(time.monotonic() - t0)
            assert len(raw["items"]) == servers
    return {
        "servers": servers,
        "requests": requests,
        "detail_p50_ms": round(percentile(facade_lat, 50) * 1000, 1),
        "detail_p99_ms": round(percentile(facade_lat, 99) * 1000, 1),
        "apiserver_list_p50_ms": round(percentile(raw_lat, 50) * 1000, 1),
        "apiserver_list_p99_ms": round(percentile(raw_lat, 99) * 1000, 1),
    }


def _get(url: str, headers: dict[str, str], ctx: ssl.SSLContext | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:
        return json.loads(resp.read())


def _post(url: str, body: Any) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--hosts", type=int, default=20)
    p.add_argument("--only", choices=["create", "detail"])
    args = p.parse_args()
    results: dict[str, Any] = {}
    if args.only in (None, "create"):
        results["create"] = bench_create(args.runs)
        print(yaml.safe_dump(results["create"], sort_keys=False), flush=True)
    if args.only in (None, "detail"):
        results["detail"] = bench_detail(args.servers, args.requests, args.hosts)
        print(yaml.safe_dump(results["detail"], sort_keys=False), flush=True)
    print(yaml.safe_dump(results, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
