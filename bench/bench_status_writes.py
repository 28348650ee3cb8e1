"""What one status write costs the API server, and what asking for no field validation saves:
the same server-side apply of a Server's status (the agent's ACTIVE write: phase, power state
and conditions), sent as kubenova sends it (``fieldValidation=Ignore``, see
``kubenova_api.kube.APPLY_FIELD_VALIDATION``) and as a client that leaves the parameter out (the
API server's default, ``Warn``) or sends ``Strict`` (as kubectl does), on a real kube-apiserver
with etcd and nothing else running.

    python bench/bench_status_writes.py [--servers 200] [--rounds 6] [--threads 8]

Each round applies a new status to every Server once per way of sending it, the ways in turn
(a different order each round), from ``--threads`` threads; the API server's CPU is read from
/proc before and after each way's share. It prints, per way: the writes, the request time p50
and p99 as the client saw it, the API server's CPU per write, and its ratio to the default (the
raw baseline, measured in the same run: these machines are noisy).

Before printing it checks that the work happened: every write answered 200 with the status it
sent; the API server's own count of ``servers/status`` APPLY answered 200 rose by exactly the
writes made; and a fresh LIST shows every Server with the last status applied to it.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import pathlib
import random
import sys
import tempfile
import threading
import time
from typing import Any

import yaml
from kubernetes import client

import benchkit
from kubenova_api import constants, kube
from kubenova_api.common import Condition, ObjectMeta
from kubenova_api.resources import Phase, Server, ServerSpec, ServerStatus
from kubenova_devenv import stack

NAMESPACE = "bench-status"
MANAGER = "kubenova-bench"
BASELINE = "default"
WAYS: dict[str, str | None] = {
    BASELINE: None,
    "Strict": "Strict",
    kube.APPLY_FIELD_VALIDATION: kube.APPLY_FIELD_VALIDATION,
}
"""Each way of sending the write: its name and the ``fieldValidation`` it sends (None: the
parameter left out, the API server's default)."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", type=int, default=200, help="Servers written in each round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=8, help="writers at once")
    args = p.parse_args()
    if args.servers < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--servers, --rounds and --threads must be at least 1")
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-status-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=0)
    try:
        bed.start(components=False)
        result = run(bed, args)
    finally:
        bed.stop()
    print(
        yaml.safe_dump(result, sort_keys=False, explicit_start=True, explicit_end=True), flush=True
    )
    print_table(result)
    return 0


def status_of(serial: int) -> ServerStatus:
    """The status of write number ``serial``: a value no earlier write left, so that every
    write changes the object (a write that changes nothing is answered without storing)."""
    return ServerStatus(
        phase=Phase.ACTIVE,
        powerState="Running",
        conditions=[
            Condition(
                type="Ready",
                status="True",
                reason="Running",
                message=f"the guest runs (write {serial})",
            )
        ],
    )


def run(bed: stack.Stack, args: argparse.Namespace) -> dict[str, Any]:
    api = benchkit.api_client(bed, pool=max(32, args.threads))
    k = kube.Kube(api, MANAGER, MANAGER)
    custom = client.CustomObjectsApi(api)
    bed.kubectl("create", "namespace", NAMESPACE)
    names = [f"w{i:05d}" for i in range(args.servers)]
    for name in names:
        k.create(
            Server(
                metadata=ObjectMeta(name=name, namespace=NAMESPACE),
                spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
            )
        )
    apiserver = benchkit.cpu_pids(bed)["kube-apiserver"]
    serial = iter(range(1, 1 << 62))
    serial_lock = threading.Lock()
    last: dict[str, str] = {}
    problems: list[str] = []
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, float] = collections.defaultdict(float)
    writes: collections.Counter[str] = collections.Counter()
    before_counts = benchkit.api_writes(api)

    def write(name: str, way: str) -> None:
        validation = WAYS[way]
        with serial_lock:
            n = next(serial)
        status = status_of(n)
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": Server.KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "status": status.to_apply(),
        }
        extra: dict[str, Any] = {} if validation is None else {"field_validation": validation}
        started = time.perf_counter()
        out = kube.as_dict(
            custom.patch_namespaced_custom_object_status(
                constants.GROUP,
                constants.VERSION,
                NAMESPACE,
                Server.PLURAL,
                name,
                body,
                field_manager=MANAGER,
                _content_type=kube.APPLY,
                _request_timeout=kube.TIMEOUT,
                **extra,
            )
        )
        elapsed = time.perf_counter() - started
        got = Server.parse(out).status.conditions
        sent = status.conditions[0].message
        if not got or got[0].message != sent:
            problems.append(f"{name}: answered with {got!r}, not the status sent ({sent!r})")
        with serial_lock:
            last[name] = sent
            seconds[way].append(elapsed)

    order = list(WAYS)
    rng = random.Random(7)
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.rounds):
            rng.shuffle(order)
            for way in order:
                cpu_before = benchkit.cpu_seconds(apiserver)
                futures = [pool.submit(write, name, way) for name in names]
                for future in futures:
                    try:
                        future.result()
                    except Exception as exc:  # a write that failed is work not done
                        problems.append(f"a write ({way}) failed: {exc}")
                cpu[way] += benchkit.cpu_seconds(apiserver) - cpu_before
                writes[way] += len(names)
    verify(api, names, last, writes, before_counts, problems)
    base_cpu = cpu[BASELINE] / writes[BASELINE]
    ways = {}
    for way, validation in WAYS.items():
        per_write = cpu[way] / writes[way]
        times = seconds[way]
        ways[way] = {
            "field_validation": validation or "(left out)",
            "writes": writes[way],
            "p50_ms": round(1000 * benchkit.percentile(times, 50), 2),
            "p99_ms": round(1000 * benchkit.percentile(times, 99), 2),
            "apiserver_cpu_ms_per_write": round(1000 * per_write, 3),
            "ratio_to_default": round(per_write / base_cpu, 3) if base_cpu > 0 else None,
        }
    return {"servers": len(names), "rounds": args.rounds, "threads": args.threads, "ways": ways}


def verify(
    api: client.ApiClient,
    names: list[str],
    last: dict[str, str],
    writes: collections.Counter[str],
    before_counts: collections.Counter[benchkit.WriteKey],
    problems: list[str],
) -> None:
    """Fail unless every write timed was carried out: the API server counted each as a 200,
    and a fresh LIST shows each Server with the last status written to it."""
    after = benchkit.api_writes(api)
    key = benchkit.WriteKey("servers", "status", "APPLY", "200")
    counted = after[key] - before_counts[key]
    made = sum(writes.values())
    if counted != made:
        problems.append(f"the API server carried out {counted} status applies, not {made}")
    raw, _ = benchkit.list_all(benchkit.lister(api, Server.PLURAL, NAMESPACE))
    listed = {s.name: s for s in map(Server.parse, raw)}
    for name in names:
        server = listed.get(name)
        conditions = server.status.conditions if server is not None else []
        message = conditions[0].message if conditions else None
        if message != last.get(name):
            problems.append(f"{name}: a LIST shows {message!r}, not the last write {last[name]!r}")
    benchkit.fail_if(problems[:20], "status writes")


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{'fieldValidation':>16} {'writes':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'apiserver CPU ms/write':>22} {'x default':>9}"
    )
    for way in result["ways"].values():
        print(
            f"{way['field_validation']:>16} {way['writes']:7d} {way['p50_ms']:7.2f} "
            f"{way['p99_ms']:7.2f} {way['apiserver_cpu_ms_per_write']:22.3f} "
            f"{way['ratio_to_default']:9.3f}"
        )
    print(
        "CPU ms/write: the kube-apiserver's CPU time (from /proc) while that way's writes ran, "
        "per write; x default: against the writes that leave fieldValidation out, in the same "
        "run; p50/p99: each request's time as this client saw it"
    )


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
