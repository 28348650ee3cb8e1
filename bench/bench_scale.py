"""N Servers created at once against many simulated hosts (real Agents on libvirt's test driver,
in ``simfleet`` processes of 25 hosts each at nice 10 by default): time until all are ACTIVE,
create->ACTIVE percentiles, binding rate, API writes per Server (from the API server's own
request metrics), memory of the controller and of the agents, and the CPU each process used
until all were ACTIVE (the API server, etcd, the controller, the agents, this benchmark: what
bounds the rate). With ``--etcd-split`` a watch of its own on etcd (``bench/etcdwatch.py``, a
process of its own) splits a Server's way: create -> stored in etcd, and etcd -> seen by a
watch of the API server, for each of its three changes (arrival, binding, ACTIVE), each of
which reaches the component that acts on it through that path.

    python bench/bench_scale.py --hosts 100 --servers 100 [--servers 1000 ...]
                                [--fleet-processes 4] [--fleet-nice 10] [--timeout SECONDS]
                                [--ipam both] [--shared-watches] [--idle SECONDS]

``--ipam on`` gives every Server a NIC on its namespace's default tenant Network (a /20), so
the controller's IPAM decides an address with each binding; ``both`` runs each size without,
then with, in the same run (the p95 change is IPAM's cost). With IPAM the final check also
requires every Server to hold one address of the network, none twice.

Before printing anything it checks, by fresh LISTs, that the work it timed happened: every
Server ACTIVE, each bound exactly once (the watch saw one host, the one the LIST shows, and the
controller's Events say so too), and every host running in libvirt exactly the Servers ACTIVE on
it. Otherwise it exits 1 naming the Servers that are not, and where they are.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import ipaddress
import math
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client

import benchkit
from kubenova_devenv import simhost, stack

FLAVOR = "bench.tiny"
IMAGE = "bench-image"
# Simulated hosts per simfleet process by default (why: --fleet-processes' help). At 25 per
# process the fleet's CPU at N=1,000 fell by about a third, and the API server had that; more
# processes cost memory (about 95 MiB each) and gained no more.
HOSTS_PER_FLEET_PROCESS = 25
# The simfleets' nice value by default (why: --fleet-nice's help).
FLEET_NICE = 10
BROKEN = {
    # What the last Server of each size refers to with --broken-server: it cannot be ACTIVE.
    "image": (FLAVOR, "bench-image-bad-checksum"),
    "flavor": ("bench.too-big", IMAGE),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--servers", type=int, action="append", help="a size (repeat for several)")
    p.add_argument(
        "--fleet-processes",
        type=int,
        help="spread the simulated hosts over this many simfleet processes (default: one per\n"
        f"{HOSTS_PER_FLEET_PROCESS} hosts). Each agent has about 13 threads; a hundred agents\n"
        "under one interpreter lock spent about half of their process's CPU handing it over\n"
        "(perf: futex waits and task switches), CPU the control plane then lacked",
    )
    p.add_argument(
        "--fleet-nice",
        type=int,
        default=FLEET_NICE,
        metavar="N",
        help=f"run the simfleets at this nice value (default {FLEET_NICE}; 0: the control plane's\n"
        "priority). The simulated hosts stand in for machines of their own; at the same\n"
        "priority they took the two cores from kube-apiserver, whose etcd watch stream then\n"
        "waited longer for a core, and a Server's hops (the agents' too) were slower on average",
    )
    p.add_argument("--cpus", type=int, default=16, help="vCPUs of each simulated host")
    p.add_argument("--memory-mib", type=int, default=65536, help="memory of each simulated host")
    p.add_argument("--heartbeat-seconds", type=float, default=10.0)
    p.add_argument(
        "--shared-watches",
        action="store_true",
        help="each simfleet process watches each kind once for all its hosts, instead of one\n"
        "field-selected watch per agent (see kubenova_agent.informer.SharedWatches): at\n"
        "1,000 hosts on one machine the API server's per-watcher filtering of custom\n"
        "resources otherwise bounds the run",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first measure the idle fleet this long (after two beats to settle): CPU of each\n"
        "process and the API server's writes; every host must renew its heartbeat Lease in\n"
        "that time and stay Up",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for all Servers of a size (default 300 + 0.5 per Server)",
    )
    p.add_argument(
        "--broken-server",
        choices=sorted(BROKEN),
        help="make the last Server of each size one that cannot become ACTIVE (an Image with\n"
        "a wrong checksum, or a Flavor no host fits): the run must fail naming it",
    )
    p.add_argument(
        "--ipam",
        choices=("off", "on", "both"),
        default="off",
        help="Servers on a default tenant Network (addresses by the controller's IPAM);\n"
        "both: each size without, then with",
    )
    p.add_argument(
        "--restart-controller",
        action="store_true",
        help="at the end, stop the controller and start it again beside every Server made: how\n"
        "long until a pass of the new one counts them all ACTIVE, and its peak memory (a\n"
        "controller that restarts, or takes over, in a full cluster)",
    )
    p.add_argument(
        "--etcd-split",
        action="store_true",
        help="watch etcd too (in a process of its own), and split each Server's way: create ->\n"
        "stored in etcd, etcd -> seen by a watch of the API server. Off unless asked for: at\n"
        "10,000 Servers the run with it was slower (p99 49.7 s against 26.7 s, all ACTIVE 502 s\n"
        "against 421 s; one run each, so perhaps the machine); at 1,000 no cost was seen",
    )
    args = p.parse_args()
    sizes = args.servers or [100]
    if args.fleet_processes is None:
        args.fleet_processes = math.ceil(args.hosts / HOSTS_PER_FLEET_PROCESS)
    if not 1 <= args.fleet_processes <= args.hosts:
        p.error("--fleet-processes must be between 1 and --hosts")
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-scale-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=0, heartbeat_grace_seconds=120)
    results = []
    with bed:
        api = benchkit.api_client(bed)
        define_flavors_and_images(bed)
        fleets, hosts = start_fleets(bed, args)
        benchkit.wait_hosts_ready(bed, api, hosts)
        if args.idle > 0:
            idle = measure_idle(bed, api, hosts, args)
            print(yaml.safe_dump({"idle": idle}, sort_keys=False, explicit_start=True), flush=True)
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.ipam]
        for i, n in enumerate(sizes):
            for ipam in modes:
                namespace = f"scale-{i}" + ("-ipam" if ipam else "")
                result = run(bed, api, n, namespace, hosts, fleets, args, ipam)
                results.append(result)
                print(yaml.safe_dump(result, sort_keys=False, explicit_start=True), flush=True)
        restart = None
        if args.restart_controller:
            restart = restart_controller(bed, sum(r["servers"] for r in results))
            print(yaml.safe_dump({"restart": restart}, sort_keys=False, explicit_start=True))
    print_table(results)
    if restart is not None:
        print(
            f"controller restarted beside {restart['servers']} Servers: a pass counted them all "
            f"ACTIVE after {restart['all_counted_s']:.2f}s; peak RSS "
            f"{restart['peak_rss_mib']:.1f} MiB, {restart['rss_mib']:.1f} MiB then"
        )
    return 0


def restart_controller(bed: stack.Stack, servers: int, timeout: float = 180) -> dict[str, Any]:
    """Stop the controller (it gives up its Lease) and start it again beside the ``servers``
    Servers the run left ACTIVE. Times until a pass of the new process counts them all ACTIVE
    (``kubenova_servers``, read from the state a pass folded), then reads its memory; fails
    unless it does within ``timeout``."""
    assert bed.controller is not None
    bed.controller.stop()
    started = time.monotonic()
    proc = bed.start_controller()
    while True:
        gone = benchkit.exited(bed)
        if gone is not None:
            benchkit.fail_if([gone], "controller restart")
        try:
            text = bed.metrics("controller")
        except OSError:  # not serving yet
            text = ""
        counted = sum(
            value
            for labels, value in benchkit.samples(text, "kubenova_servers")
            if labels.get("phase") == "ACTIVE"
        )
        if counted == servers:
            break
        if time.monotonic() - started > timeout:
            benchkit.fail_if(
                [f"after {timeout:.0f} s it counted {counted:.0f} of {servers} Servers ACTIVE"],
                "controller restart",
            )
        time.sleep(0.1)
    all_counted = time.monotonic() - started
    rss, peak = benchkit.memory_mib(proc_pid(proc))
    return {
        "servers": servers,
        "all_counted_s": round(all_counted, 3),
        "rss_mib": rss,
        "peak_rss_mib": peak,
    }


def define_flavors_and_images(bed: stack.Stack) -> None:
    def apply(kind: str, name: str, spec: dict[str, Any]) -> None:
        doc = {"apiVersion": benchkit.API_VERSION, "kind": kind, "metadata": {"name": name}}
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({**doc, "spec": spec}))

    apply("Flavor", FLAVOR, {"vcpus": 1, "memoryMiB": 64, "diskGiB": 1})
    apply("Flavor", "bench.too-big", {"vcpus": 1, "memoryMiB": 16 * 1024 * 1024, "diskGiB": 1})
    # The test driver boots nothing: a tiny kernel and ramdisk keep the hosts' first fetches
    # (one per host) from dominating what is measured: scheduling and spawning.
    assert bed.image_server is not None
    served = bed.workdir / "images"
    files = {}
    for name in ("tiny-kernel", "tiny-ramdisk"):
        (served / name).write_bytes(name.encode() * 64)
        files[name] = {
            "url": bed.image_server.url(name),
            "sha256": hashlib.sha256((served / name).read_bytes()).hexdigest(),
        }
    uec = {"kernel": files["tiny-kernel"], "ramdisk": files["tiny-ramdisk"]}
    apply("Image", IMAGE, {"architecture": "i686", "source": {"uec": uec}})
    bad = {**uec, "kernel": {**files["tiny-kernel"], "sha256": "0" * 64}}
    apply("Image", BROKEN["image"][1], {"architecture": "i686", "source": {"uec": bad}})


def start_fleets(bed: stack.Stack, args: argparse.Namespace) -> tuple[list[stack.Proc], list[str]]:
    """``--hosts`` simulated hosts over ``--fleet-processes`` simfleet processes, one host-name
    prefix each; they stop with the bed. Returns the processes and the host names."""
    procs, hosts = [], []
    count = args.fleet_processes
    for i in range(count):
        share = args.hosts // count + (1 if i < args.hosts % count else 0)
        prefix = "sim" if count == 1 else f"sim{i}"
        procs.append(
            bed.start_sim_fleet(
                share,
                cpus=args.cpus,
                memory_mib=args.memory_mib,
                heartbeat=args.heartbeat_seconds,
                networks=args.ipam != "off",
                prefix=prefix,
                name="simfleet" if count == 1 else f"simfleet-{i}",
                shared_watches=args.shared_watches,
                nice=args.fleet_nice,
            )
        )
        hosts += simhost.host_names(prefix, share)
    return procs, hosts


def run(
    bed: stack.Stack,
    api: client.ApiClient,
    n: int,
    namespace: str,
    hosts: list[str],
    fleets: list[stack.Proc],
    args: argparse.Namespace,
    ipam: bool = False,
) -> dict[str, Any]:
    """Create ``n`` Servers at once in ``namespace``, wait until all are ACTIVE, check that
    they really are, and return the figures."""
    custom = client.CustomObjectsApi(api)
    bed.kubectl("create", "namespace", namespace)
    if ipam:
        default_network(bed, namespace)
    names = [f"s{i:05d}" for i in range(n)]
    refs = {name: (FLAVOR, IMAGE) for name in names}
    if args.broken_server:
        refs[names[-1]] = BROKEN[args.broken_server]
    expected = set(names)
    settled: set[str] = set()  # ACTIVE once, or in ERROR now (waiting longer will not help)

    def on_change(track: benchkit.Track) -> None:
        if track.key not in expected:
            return
        if track.first("phase", "ACTIVE") or track.now("phase") == "ERROR":
            settled.add(track.key)
        else:
            settled.discard(track.key)

    tracker = benchkit.server_tracker()
    tracker.listeners.append(on_change)
    watcher = benchkit.watch(
        f"Servers in {namespace}", benchkit.lister(api, "servers", namespace), tracker
    )
    created: dict[str, float] = {}
    answered: dict[str, float] = {}  # when the create's response came
    metrics_before = benchkit.api_metrics(api)
    before = benchkit.api_writes(api, metrics_before)
    watch_before = benchkit.watch_delivery(metrics_before, "servers")
    passes_before = controller_passes(bed)
    pids = benchkit.cpu_pids(bed)
    cpu_before = {name: benchkit.cpu_seconds(pid) for name, pid in pids.items()}
    cpu_before["bench"] = sum(os.times()[:2])
    machine_before = benchkit.machine_cpu()
    started = time.monotonic()

    def create(name: str) -> None:
        flavor, image = refs[name]
        created[name] = time.monotonic()
        try:
            custom.create_namespaced_custom_object(
                benchkit.GROUP,
                benchkit.VERSION,
                namespace,
                "servers",
                {
                    "apiVersion": benchkit.API_VERSION,
                    "kind": "Server",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"flavorRef": flavor, "imageRef": image},
                },
            )
        finally:
            answered[name] = time.monotonic()

    # etcd's own view of the same Servers: what of a Server's way was etcd's, what the API
    # server's watch path took (each of the three changes reaches its reader through it).
    etcd = (
        benchkit.EtcdWatch(
            f"http://127.0.0.1:{bed.cp.etcd_port}",
            f"/registry/{benchkit.GROUP}/servers/{namespace}/",
        )
        if args.etcd_split
        else None
    )
    with (
        watcher,
        etcd if etcd is not None else contextlib.nullcontext(),
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        list(pool.map(create, names))  # an error in a create is raised here
        creates_s = time.monotonic() - started
        timeout = args.timeout if args.timeout is not None else 300 + 0.5 * n
        done = watcher.wait_for(
            lambda: len(settled) == n, timeout, give_up=lambda: benchkit.exited(bed)
        )
        waited = time.monotonic() - started
        gone = benchkit.exited(bed)
        measured: dict[str, Any] = {}
        if done and gone is None:  # figures of processes that still run, right at the end
            cpu_after = {name: benchkit.cpu_seconds(pid) for name, pid in pids.items()}
            cpu_after["bench"] = sum(os.times()[:2])
            machine_after = benchkit.machine_cpu()
            time.sleep(1)  # let the last writes land in the metrics
            metrics = benchkit.api_metrics(api)
            ctl, ctl_peak = controller_memory(bed)
            fleet_rss = [benchkit.memory_mib(proc_pid(f))[0] for f in fleets]
            measured = {
                "writes": benchkit.summarise_writes(benchkit.api_writes(api, metrics) - before, n),
                # The watch cache offers every Server event to every Server watcher (no index
                # on a custom resource's fields): one that falls behind is closed.
                "server_watch_delivery": benchkit.summarise_watch_delivery(
                    watch_before, benchkit.watch_delivery(metrics, "servers")
                ),
                "controller_rss_mib": ctl,
                "controller_peak_rss_mib": ctl_peak,
                "fleet_rss_mib": fleet_rss,
                "per_agent_rss_mib": round(sum(fleet_rss) / len(hosts), 2),
                "controller_passes": {
                    k: round(v - passes_before[k], 2) for k, v in controller_passes(bed).items()
                },
                "cpu_until_all_active": benchkit.cpu_use(cpu_before, cpu_after, waited),
                "machine_until_all_active": benchkit.machine_use(
                    machine_before, machine_after, waited
                ),
            }
        watch_stats = watcher.stats()

    problems = benchkit.verify_servers(api, namespace, names, tracker)
    if ipam:
        problems += verify_addresses(api, namespace, names)
    problems += benchkit.verify_bound_once_by_events(api, namespace, names)
    if gone is None:  # else the hosts cannot be read as they are, and that is said below
        problems += benchkit.verify_running_vms(
            api, hosts, args.heartbeat_seconds, give_up=lambda: benchkit.exited(bed)
        )
    else:
        problems.insert(0, f"during the run: {gone}")
    if not done:
        problems.insert(0, f"waited {waited:.0f} s; {n - len(settled)} Servers never ACTIVE")
    benchkit.fail_if(
        problems, f"N={n} Servers on {len(hosts)} hosts: the work timed did not all happen"
    )

    # Complete data from here on: every Server was created, seen bound and seen ACTIVE.
    def first(field: str, value: Callable[[Any], bool]) -> dict[str, float]:
        out = {}
        for name in names:
            change = next(c for c in tracker.tracks[name].changes[field] if value(c.value))
            out[name] = change.at
        return out

    active = first("phase", lambda v: v == "ACTIVE")
    bound = first("nodeName", bool)
    latency = [active[k] - created[k] for k in names]
    to_bound = [bound[k] - created[k] for k in names]
    to_active = [active[k] - bound[k] for k in names]
    # The Server's arrival is the first change the watch saw with no node yet (a relist may
    # have shown it bound already: then its first change, the binding, is the bound).
    seen = {
        k: next(
            (c.at for c in tracker.tracks[k].changes["nodeName"] if not c.value),
            bound[k],
        )
        for k in names
    }
    to_seen = [seen[k] - created[k] for k in names]
    by_etcd = (
        {}
        if etcd is None
        else etcd_split(etcd, names, created, {"arrival": seen, "binding": bound, "ACTIVE": active})
    )
    request = [answered[k] - created[k] for k in names]
    binds = sorted(bound.values())
    span = binds[-1] - binds[0]
    late = tracker.late()
    return {
        "servers": n,
        "ipam": ipam,
        "hosts": len(hosts),
        "fleet_processes": len(fleets),
        # As the kernel has it, not as asked: every simfleet's nice value.
        "fleet_nice": sorted({os.getpriority(os.PRIO_PROCESS, proc_pid(f)) for f in fleets}),
        "shared_watches": args.shared_watches,
        "active": n,
        "all_active_s": round(max(active.values()) - started, 3),
        "p50_s": round(benchkit.percentile(latency, 50), 3),
        "p95_s": round(benchkit.percentile(latency, 95), 3),
        "p99_s": round(benchkit.percentile(latency, 99), 3),
        "binds_per_s": round(n / span, 1) if n > 1 and span > 0 else None,
        # Where the time goes: all creates answered after creates_s; a Server waits for the
        # controller (create -> bound), then for its host's agent (bound -> ACTIVE).
        "creates_s": round(creates_s, 3),
        # ... of which the create request itself, and until a watch (this benchmark's) saw it:
        "create_request_p50_p99_s": [round(benchkit.percentile(request, q), 3) for q in (50, 99)],
        "create_to_seen_p50_p99_s": [round(benchkit.percentile(to_seen, q), 3) for q in (50, 99)],
        "create_to_bound_p50_p99_s": [round(benchkit.percentile(to_bound, q), 3) for q in (50, 99)],
        **by_etcd,
        "bound_to_active_p50_p99_s": [
            round(benchkit.percentile(to_active, q), 3) for q in (50, 99)
        ],
        **measured,
        "watch": {**watch_stats, "servers_seen_late_by_a_relist": len(late)},
    }


NETWORK_CIDR = "10.128.0.0/20"


def default_network(bed: stack.Stack, namespace: str) -> None:
    """The namespace's default tenant Network, with its VNI given before the burst."""
    body = {
        "apiVersion": benchkit.API_VERSION,
        "kind": "Network",
        "metadata": {"name": "default-net", "namespace": namespace},
        "spec": {"cidr": NETWORK_CIDR, "default": True},
    }
    bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = bed.get("network", "default-net", namespace) or {}
        if (got.get("status") or {}).get("vni"):
            return
        time.sleep(0.2)
    raise SystemExit(f"the default Network of {namespace} got no VNI in 60 s")


def verify_addresses(api: client.ApiClient, namespace: str, names: list[str]) -> list[str]:
    """By a fresh LIST: every Server holds one address of the network, none twice."""
    items, _ = benchkit.list_all(benchkit.lister(api, "servers", namespace))
    by_name = {o["metadata"]["name"]: o for o in items}
    holders: dict[str, str] = {}
    problems = []
    cidr = ipaddress.IPv4Network(NETWORK_CIDR)
    for name in names:
        addresses = benchkit.status(by_name.get(name)).get("addresses") or []
        if len(addresses) != 1 or ipaddress.IPv4Address(addresses[0]["ip"]) not in cidr:
            problems.append(f"{name} holds {addresses}, not one address of {cidr}")
            continue
        ip = addresses[0]["ip"]
        if ip in holders:
            problems.append(f"{ip} is held by both {holders[ip]} and {name}")
        holders[ip] = name
    return problems


def measure_idle(
    bed: stack.Stack, api: client.ApiClient, hosts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """What an idle fleet costs for ``args.idle`` seconds: CPU of each process, the API
    server's writes by resource and verb, the controller's passes. Fails unless every host
    renewed its heartbeat Lease within the window and every Hypervisor is still Up at its end
    (an idle fleet that costs nothing because it stopped beating is no result)."""
    time.sleep(2 * args.heartbeat_seconds)  # the first beats' status writes are start-up
    pids = benchkit.cpu_pids(bed)
    cpu_before = {name: benchkit.cpu_seconds(pid) for name, pid in pids.items()}
    writes_before = benchkit.api_writes(api)
    passes_before = controller_passes(bed)
    window_start = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    time.sleep(args.idle)
    wall = time.monotonic() - started
    cpu_after = {name: benchkit.cpu_seconds(pid) for name, pid in pids.items()}
    delta = benchkit.api_writes(api) - writes_before
    passes = {k: round(v - passes_before[k], 2) for k, v in controller_passes(bed).items()}
    renewed = benchkit.lease_renewals(api)
    problems = [
        f"{host}: its heartbeat Lease was not renewed in the {wall:.0f} s window "
        f"(last {renewed[host].isoformat() if host in renewed else 'never'})"
        for host in hosts
        if renewed.get(host, window_start) <= window_start
    ]
    items, _ = benchkit.list_all(benchkit.lister(api, "hypervisors", None))
    up = {
        hv["metadata"]["name"]
        for hv in items
        if benchkit.condition(hv, "Up").get("status") == "True"
    }
    problems += [
        f"{host} is not Up at the end of the idle window" for host in hosts if host not in up
    ]
    benchkit.fail_if(problems, f"{len(hosts)} idle hosts: not every host kept beating")
    writes = collections.Counter[str]()
    for key, n in delta.items():
        if n > 0:
            writes[f"{key.verb} {key.path} {key.code}"] += n
    per_minute = 60.0 / wall
    return {
        "hosts": len(hosts),
        "seconds": round(wall, 1),
        "heartbeat_seconds": args.heartbeat_seconds,
        "writes": dict(writes.most_common()),
        "hypervisor_status_writes_per_host_minute": round(
            sum(
                n
                for k, n in delta.items()
                if k.path == "hypervisors/status" and k.code.startswith("2")
            )
            * per_minute
            / len(hosts),
            2,
        ),
        "lease_writes_per_host_minute": round(
            sum(n for k, n in delta.items() if k.resource == "leases" and k.code.startswith("2"))
            * per_minute
            / len(hosts),
            2,
        ),
        "cpu_s_per_minute": {
            name: round((cpu_after[name] - cpu_before[name]) * per_minute, 2) for name in cpu_before
        },
        "controller_passes": passes,
    }


def controller_passes(bed: stack.Stack) -> dict[str, float]:
    """How many passes the controller has run and the seconds they took, from its metrics."""
    text = bed.metrics("controller")
    found = dict(re.findall(r"^kubenova_pass_seconds_(count|sum) (\S+)$", text, re.M))
    return {"passes": float(found.get("count", 0)), "seconds": float(found.get("sum", 0))}


def proc_pid(proc: stack.Proc) -> int:
    assert proc.popen is not None
    return proc.popen.pid


def etcd_split(
    etcd: benchkit.EtcdWatch,
    names: list[str],
    created: dict[str, float],
    seen_at: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Of each Server's way: create -> stored in etcd, and, for each change this benchmark's
    watch saw (its arrival, its binding, ACTIVE), etcd -> the API server's watch (how long
    the API server took to deliver what etcd already held). None, with why, unless etcd's
    watch saw every change of every Server."""
    stored = {"arrival": etcd.stored, "binding": etcd.bound, "ACTIVE": etcd.active}
    missing = [f"{change} of {k}" for change, at in stored.items() for k in names if k not in at]
    why = etcd.error or (f"etcd's watch missed {len(missing)}: {missing[:3]}" if missing else None)
    if why is not None:
        return {"create_to_etcd_p50_p99_s": None, "etcd_to_watch_p50_p99_s": None, "etcd": why}
    to_etcd = [etcd.stored[k] - created[k] for k in names]
    lag = [seen_at[change][k] - at[k] for change, at in stored.items() for k in names]
    return {
        "create_to_etcd_p50_p99_s": [round(benchkit.percentile(to_etcd, q), 3) for q in (50, 99)],
        "etcd_to_watch_p50_p99_s": [round(benchkit.percentile(lag, q), 3) for q in (50, 99)],
    }


def controller_memory(bed: stack.Stack) -> tuple[float, float]:
    assert bed.controller is not None
    return benchkit.memory_mib(proc_pid(bed.controller))


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'servers':>8} {'ipam':>5} {'hosts':>6} {'all ACTIVE':>11} "
        f"{'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'binds/s':>8} {'writes/srv':>10} {'status/srv':>10} {'events/srv':>10} "
        f"{'refused':>8} {'ctl MiB':>8} {'ctl peak':>8} {'agent MiB':>9} "
        f"{'CPU ms/srv':>10} {'steal':>6} {'closed':>6} {'etcd->watch':>11}"
    )
    for r in results:
        w = r["writes"]
        binds = f"{r['binds_per_s']:8.1f}" if r["binds_per_s"] is not None else f"{'-':>8}"
        cpu = r["cpu_until_all_active"]
        cpu_ms = 1000 * sum(p["cpu_s"] for p in cpu.values()) / r["servers"]
        split = r.get("etcd_to_watch_p50_p99_s")
        lag = f"{split[0]:.2f}s" if split else "-"
        print(
            f"{r['servers']:8d} {'on' if r['ipam'] else 'off':>5} {r['hosts']:6d} "
            f"{r['all_active_s']:10.2f}s {r['p50_s']:6.2f}s "
            f"{r['p95_s']:6.2f}s {r['p99_s']:6.2f}s {binds} "
            f"{w['server_writes_per_server']:10.2f} {w['status_writes_per_server']:10.2f} "
            f"{w['events_per_server']:10.2f} {sum(w['refused'].values()):8d} "
            f"{r['controller_rss_mib']:8.1f} "
            f"{r['controller_peak_rss_mib']:8.1f} {r['per_agent_rss_mib']:9.2f} "
            f"{cpu_ms:10.1f} {r['machine_until_all_active']['steal_share']:6.1%} "
            f"{r['server_watch_delivery']['watchers_closed']:6d} {lag:>11}"
        )
    print(
        "writes/srv: writes to servers and servers/status (the create included) the API "
        "server carried out, per Server; events/srv apart; refused: attempts answered 4xx/5xx "
        "(429 = over the API server's in-flight limit); from apiserver_request_total; "
        "agent MiB: the simfleet processes' memory per host (each process holds about 95 MiB "
        "of its own, see --fleet-processes); "
        "CPU ms/srv: CPU time of the control plane, controller, agents and this benchmark "
        "until all ACTIVE, per Server; steal: the share of the machine's CPU time its "
        "hypervisor gave to others meanwhile (a noisy machine, not slower code); closed: "
        "Server watchers the API server closed for falling behind (each watches again); "
        "etcd->watch: p50 of how long the API server took to deliver a change etcd held to "
        "a watch (each Server's arrival, binding and ACTIVE; '-' without the etcd split)"
    )
    for r in results:
        late = r["watch"]["servers_seen_late_by_a_relist"]
        if late:
            print(
                f"N={r['servers']}: the watch expired (410) and was relisted; {late} Servers' "
                "times are those of the relist, later than the change itself"
            )


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
