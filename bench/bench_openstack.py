"""The OpenStack API facade's cost, each figure next to kubenova's own path in the same run.

``create``: on one real libvirtd + QEMU host, alternately, the same Server made
  - by ``openstack server create --wait`` (python-openstackclient 10.5.0, as a user runs it;
    it polls the server every few seconds, and that is what its user waits),
  - by the facade's own API as a script does it: ``POST /v2.1/servers`` then ``GET
    /v2.1/servers/{id}`` every 0.1 s until ACTIVE (the facade's cost without the CLI's),
  - by ``kubectl apply`` + ``kubectl wait --for=condition=Ready`` (the raw baseline).
  Each one counts only once its domain runs in libvirt; the first create (image download)
  is a warm-up, not counted.
``detail``: ``GET /v2.1/servers/detail`` latency (p50, p99) with N Servers (1,000 by default)
  in one namespace on simulated hosts (libvirt's test driver), every answer checked to list all
  N, ACTIVE with no task; next to it the API server's own LIST of the same Servers (what
  ``kubectl get`` asks), the facade's floor.

Before printing anything, a fresh LIST has shown every timed Server there, ACTIVE on a host
(for ``create``: after each round, with its domain running in libvirt, before the round's
Servers are deleted to make room); otherwise it fails naming what is missing.

    python bench/bench_openstack.py [--runs 3] [--servers 1000] [--requests 50] [--only create]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import yaml

import benchkit
from kubenova_devenv import openstackapi, simhost, stack

USER = openstackapi.OpenStackUser("bench", "bench-secret", "alice")
OPENSTACK = pathlib.Path(sys.executable).parent / "openstack"
NS = "bench"
MANY = "many"


def facade(bed: stack.Stack) -> str:
    openstackapi.install(bed, [USER])
    openstackapi.grant(bed, "kubenova-openstack-admin", user=USER.kubernetes_user)
    proc, url = openstackapi.start(bed)
    bed.extra.append(proc)
    return url


def http(method: str, url: str, headers: dict[str, str], body: Any = None,
         ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:
        text = resp.read()
        return resp.status, dict(resp.headers), json.loads(text) if text else None


def login(url: str, project: str) -> str:
    return openstackapi.login(url, USER, project)


def server_doc(name: str, flavor: str, image: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": benchkit.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"flavorRef": flavor, "imageRef": image},
    }


# ----------------------------------------------------------------------------- create


def bench_create(runs: int) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-os-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=1)
    rows: list[tuple[float, float, float]] = []
    with bed:
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("create", "namespace", NS)
        api = benchkit.api_client(bed)
        benchkit.wait_hosts_ready(bed, api, list(bed.hosts))
        host = bed.hosts[next(iter(bed.hosts))]
        url = facade(bed)
        env = openstackapi.cli_env(url, USER, NS, bed.workdir)
        token = login(url, NS)
        image = bed.get("image", "kubenova-guest")
        assert image is not None
        auth = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.88"}
        made: dict[str, str] = {}  # Nova id -> what made it

        def cli_create(name: str) -> float:
            t0 = time.monotonic()
            out = subprocess.run(
                [str(OPENSTACK), "server", "create", "--flavor", "m1.tiny", "--image",
                 "kubenova-guest", "--wait", "-f", "json", name],
                env=env, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            took = time.monotonic() - t0
            if out.returncode != 0:
                raise benchkit.BenchFailure(f"openstack server create {name} failed",
                                            [out.stderr[-1500:]])  # fmt: skip
            uid = json.loads(out.stdout)["id"]
            made[uid] = name
            running(uid, name)
            return took

        def api_create(name: str) -> float:
            body = {"server": {"name": name, "imageRef": image["metadata"]["uid"],
                               "flavorRef": "m1.tiny"}}  # fmt: skip
            t0 = time.monotonic()
            code, _, answer = http("POST", f"{url}/v2.1/servers", auth, body)
            uid = answer["server"]["id"]
            deadline = t0 + 300
            while time.monotonic() < deadline:
                _, _, shown = http("GET", f"{url}/v2.1/servers/{uid}", auth)
                if shown["server"]["status"] == "ACTIVE":
                    break
                time.sleep(0.1)
            took = time.monotonic() - t0
            if code != 202 or shown["server"]["status"] != "ACTIVE":
                raise benchkit.BenchFailure(f"POST /servers {name}: {code}, "
                                            f"{shown['server']['status']}", [])  # fmt: skip
            made[uid] = name
            running(uid, name)
            return took

        def kubectl_create(name: str) -> float:
            t0 = time.monotonic()
            bed.kubectl(
                "apply",
                "-f",
                "-",
                stdin=yaml.safe_dump(server_doc(name, "m1.tiny", "kubenova-guest", NS)),
            )
            bed.kubectl("wait", "--for=condition=Ready", f"server/{name}", "-n", NS,
                        "--timeout=300s", timeout=320)  # fmt: skip
            took = time.monotonic() - t0
            got = bed.get("server", name, NS)
            assert got is not None
            made[got["metadata"]["uid"]] = name
            running(got["metadata"]["uid"], name)
            return took

        def running(uid: str, name: str) -> None:
            state = benchkit.domain_state(host, uid)
            if state != "running":
                raise benchkit.BenchFailure(f"{name}: its domain {uid} is {state}", [])

        def verify_and_delete(what: str) -> None:
            """A fresh LIST and libvirt: every Server timed since the last call is ACTIVE and
            running; then they are deleted (the bed's one host has room for 8 vCPUs)."""
            items, _ = benchkit.list_all(benchkit.lister(api, "servers", NS))
            by_uid = {o["metadata"]["uid"]: o for o in items}
            problems = []
            for uid, name in made.items():
                obj = by_uid.get(uid)
                if obj is None or benchkit.status(obj).get("phase") != "ACTIVE":
                    problems.append(f"{name} ({uid}): {benchkit.describe_server(obj)}")
                elif benchkit.domain_state(host, uid) != "running":
                    problems.append(f"{name} ({uid}): domain {benchkit.domain_state(host, uid)}")
            benchkit.fail_if(problems, f"{what}: not every one of {len(made)} Servers is running")
            names = [by_uid[uid]["metadata"]["name"] for uid in made]
            bed.kubectl("delete", "server", *names, "-n", NS, "--timeout=180s", timeout=200)
            verified.extend(made.values())
            made.clear()

        verified: list[str] = []
        cli_create("warm-up")  # fetches the image into the host's cache
        verify_and_delete("the warm-up")
        for i in range(runs):
            rows.append(
                (cli_create(f"cli-{i}"), api_create(f"api-{i}"), kubectl_create(f"kubectl-{i}"))
            )
            c, a, k = rows[-1]
            print(f"run {i}: openstack --wait {c:.2f}s, POST+GET {a:.2f}s, kubectl {k:.2f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
            verify_and_delete(f"run {i}")
        benchkit.fail_if(
            [] if len(verified) == 1 + 3 * runs else [f"{len(verified)} Servers verified"],
            "not every timed Server was checked",
        )
    print(f"{'run':6} {'openstack --wait':>17} {'POST+GET':>9} {'kubectl apply+wait':>19} "
          f"{'ratio cli':>10} {'ratio api':>10}")  # fmt: skip
    for i, (c, a, k) in enumerate(rows):
        print(f"{i:<6} {c:17.2f} {a:9.2f} {k:19.2f} {c / k:10.2f} {a / k:10.2f}")
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"{'median':6} {med[0]:17.2f} {med[1]:9.2f} {med[2]:19.2f} "
          f"{med[0] / med[2]:10.2f} {med[1] / med[2]:10.2f}")  # fmt: skip
    return {
        "runs": runs,
        "openstack_create_wait_median_s": round(med[0], 2),
        "facade_post_get_median_s": round(med[1], 2),
        "kubectl_apply_wait_median_s": round(med[2], 2),
        "ratio_cli": round(med[0] / med[2], 2),
        "ratio_api": round(med[1] / med[2], 2),
    }


# ----------------------------------------------------------------------------- detail


def bench_detail(servers: int, requests: int, hosts: int) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-os-detail-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=0, heartbeat_grace_seconds=120)
    with bed:  # the control plane and the controller; the hosts are simulated
        flavor = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "Flavor",
            "metadata": {"name": "bench.tiny"},
            "spec": {"vcpus": 1, "memoryMiB": 64, "diskGiB": 1},
        }
        image = bed.image_manifest("bench-image", architecture="i686")
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([flavor, image]))
        bed.start_sim_fleet(hosts, cpus=64, memory_mib=262144)
        api = benchkit.api_client(bed)
        names = simhost.host_names("sim", hosts)
        benchkit.wait_hosts_ready(bed, api, names)
        bed.kubectl("create", "namespace", MANY)
        docs = [server_doc(f"s{i:04d}", "bench.tiny", "bench-image", MANY) for i in range(servers)]
        for start in range(0, servers, 200):
            bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs[start : start + 200]))

        def all_active() -> bool:
            items, _ = benchkit.list_all(benchkit.lister(api, "servers", MANY))
            active = [o for o in items if benchkit.status(o).get("phase") == "ACTIVE"]
            return len(active) >= servers

        deadline = time.monotonic() + 900
        while not all_active():
            if time.monotonic() > deadline or benchkit.exited(bed):
                break
            time.sleep(2)
        url = facade(bed)
        token = login(url, MANY)
        auth = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.88"}
        facade_lat: list[float] = []
        bad: list[str] = []
        for _ in range(requests):
            t0 = time.monotonic()
            _, _, listing = http("GET", f"{url}/v2.1/servers/detail", auth)
            facade_lat.append(time.monotonic() - t0)
            shown = listing["servers"]
            states = {(s["status"], s["OS-EXT-STS:task_state"]) for s in shown}
            if len(shown) != servers or states != {("ACTIVE", None)}:
                bad.append(f"an answer listed {len(shown)} servers, states {sorted(states)[:3]}")
        ctx = ssl.create_default_context(cafile=str(bed.cp.workdir / "pki" / "ca.crt"))
        raw_lat: list[float] = []
        path = f"/apis/{benchkit.GROUP}/{benchkit.VERSION}/namespaces/{MANY}/servers"
        k8s_auth = {"Authorization": f"Bearer {bed.cp.token(USER.kubernetes_user)}"}
        for _ in range(requests):
            t0 = time.monotonic()
            _, _, raw = http("GET", bed.cp.url + path, k8s_auth, ctx=ctx)
            raw_lat.append(time.monotonic() - t0)
            if len(raw["items"]) != servers:
                bad.append(f"the API server listed {len(raw['items'])} servers")
        items, _ = benchkit.list_all(benchkit.lister(api, "servers", MANY))
        idle = [o for o in items if benchkit.status(o).get("phase") != "ACTIVE"]
        problems = [f"{o['metadata']['name']}: {benchkit.describe_server(o)}" for o in idle[:10]]
        if len(items) != servers:
            problems.append(f"{len(items)} Servers in {MANY}, not {servers}")
        benchkit.fail_if(problems + bad[:10], f"not all {servers} Servers ACTIVE and listed")
    f50, f99 = benchkit.percentile(facade_lat, 50), benchkit.percentile(facade_lat, 99)
    r50, r99 = benchkit.percentile(raw_lat, 50), benchkit.percentile(raw_lat, 99)
    print(f"{'GET /servers/detail':22} {'p50 ms':>8} {'p99 ms':>8}   ({servers} servers, "
          f"{requests} requests each)")  # fmt: skip
    print(f"{'facade':22} {f50 * 1000:8.1f} {f99 * 1000:8.1f}")
    print(f"{'API server LIST':22} {r50 * 1000:8.1f} {r99 * 1000:8.1f}")
    print(f"{'ratio':22} {f50 / r50:8.2f} {f99 / r99:8.2f}")
    return {
        "servers": servers,
        "requests": requests,
        "detail_p50_ms": round(f50 * 1000, 1),
        "detail_p99_ms": round(f99 * 1000, 1),
        "apiserver_list_p50_ms": round(r50 * 1000, 1),
        "apiserver_list_p99_ms": round(r99 * 1000, 1),
        "ratio_p50": round(f50 / r50, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="create rounds (after one warm-up)")
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--hosts", type=int, default=20)
    p.add_argument("--only", choices=["create", "detail"])
    args = p.parse_args()
    results: dict[str, Any] = {}
    if args.only in (None, "create"):
        results["create"] = bench_create(args.runs)
    if args.only in (None, "detail"):
        results["detail"] = bench_detail(args.servers, args.requests, args.hosts)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
