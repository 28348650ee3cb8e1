"""The controller's scheduling pass alone, in one process, at sizes no test bed here can hold:
P pending Servers decided onto H hosts while B Servers are bound already. It runs the real
:class:`~kubenova_operator.binder.Binder` pass (claims, filters, weighers, the deferred writes
in their pool) and the real incremental :class:`~kubenova_operator.cluster.Cluster`; only the
API server is replaced, by a recorder of the writes the pass makes.

    python bench/bench_scheduler.py [--hosts 1000] [--pending 1000]
                                    [--bound 0 --bound 10000 --bound 100000] [--ipam both]

``--ipam on`` puts every Server on its namespace's default tenant Network (a /8): the bound
Servers hold addresses, and each decision also allocates one (the controller's IPAM, held with
the claims); ``both`` measures each size without, then with (IPAM's cost per decision).

What it shows: a pass costs what its pending Servers cost, not what is bound already (the
claims of bound Servers are kept incrementally, folded in as they change), so the time per
decision stays flat from B=0 to B=100,000; and what one decision costs in Python (the bound on
the binding rate when the API server is not the limit).

Before printing it checks that the work happened: every pending Server got exactly one binding
write, to a host that had room, and the claims per host add up to what was bound there.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import gc
import ipaddress
import sys
import threading
import time
import tracemalloc
import uuid
from typing import Any, cast

from kubenova_api import kube
from kubenova_api.kube import ObjectRef
from kubenova_api.networks import Network
from kubenova_api.resources import FlavorSpec, Hypervisor, ImageSpec, Phase, Server
from kubenova_operator import binder, binding, cluster
from kubenova_operator.scheduling.hosts import Resources
from kubenova_operator.settings import ControllerSettings

FLAVOR = FlavorSpec(vcpus=1, memoryMiB=64, diskGiB=1)
HOST_VCPUS, HOST_MIB, HOST_DISK_GIB = 64, 262144, 100000


class Failure(Exception):
    pass


@dataclasses.dataclass
class Recorder:
    """Stands in for the API server: records each write the pass makes."""

    bindings: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )
    events: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    addresses: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def apply_status(self, ref: ObjectRef, status: Any, **_: Any) -> dict[str, Any]:
        with self.lock:
            if status.nodeName:
                self.bindings[f"{ref.namespace}/{ref.name}"].append(status.nodeName)
                self.addresses[f"{ref.namespace}/{ref.name}"] = [
                    a.ip for a in status.addresses or []
                ]
        return {}

    def event(self, ref: ObjectRef, reason: str, message: str, **_: Any) -> None:
        with self.lock:
            self.events += 1


def hypervisor(name: str, now: dt.datetime, index: int = 0) -> Hypervisor:
    return Hypervisor.parse(
        {
            "metadata": {"name": name},
            "spec": {},
            "status": {
                "network": {"tunnelAddress": str(ipaddress.IPv4Address("172.16.0.1") + index)},
                "lastHeartbeatTime": now.isoformat(),
                "conditions": [{"type": "Ready", "status": "True"}],
                "total": {"vcpus": HOST_VCPUS, "memoryMiB": HOST_MIB, "diskGiB": HOST_DISK_GIB},
                "reserved": {"vcpus": 0, "memoryMiB": 0, "diskGiB": 0},
                "guestArchitectures": ["x86_64"],
                "virtType": "qemu",
            },
        }
    )


def pending_server(i: int, created: dt.datetime) -> Server:
    return Server.parse(
        {
            "metadata": {
                "name": f"p{i:06d}",
                "namespace": "bench",
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(i + 1),
                "creationTimestamp": created.isoformat(),
                "generation": 1,
            },
            "spec": {"flavorRef": "tiny", "imageRef": "img"},
        }
    )


NETWORK = "bench/net"
CIDR = ipaddress.IPv4Network("10.0.0.0/8")


def network() -> Network:
    return Network.parse(
        {
            "metadata": {"name": "net", "namespace": "bench", "uid": str(uuid.uuid4())},
            "spec": {"cidr": str(CIDR), "default": True},
            "status": {"vni": 1},
        }
    )


def bound_summary(i: int, host: str, ipam: bool = False) -> cluster.ServerSummary:
    addresses: tuple[cluster.Address, ...] = ()
    if ipam:
        ip = CIDR.network_address + 2 + i
        addresses = (cluster.Address(NETWORK, ip, f"fa:16:3e:{i >> 16 & 255:02x}:"
                                     f"{i >> 8 & 255:02x}:{i & 255:02x}"),)  # fmt: skip
    return cluster.ServerSummary(
        namespace="bound",
        name=f"b{i:07d}",
        uid=str(uuid.uuid4()),
        node=host,
        phase=Phase.ACTIVE,
        flavor=Resources(FLAVOR.vcpus, FLAVOR.memoryMiB, FLAVOR.diskGiB),
        flavor_name="tiny",
        flavor_ref="tiny",
        image_ref="img",
        group_ref=None,
        zone=None,
        deleting=False,
        addresses=addresses,
    )


def one_size(hosts: int, bound: int, pending: int, ipam: bool = False) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    names = [f"h{i:05d}" for i in range(hosts)]
    hvs = {name: hypervisor(name, now, i) for i, name in enumerate(names)}
    files = {n: {"url": f"http://x/{n}", "sha256": "0" * 64} for n in ("kernel", "ramdisk")}
    image = ImageSpec.model_validate({"source": {"uec": files}})
    gc.collect()
    tracemalloc.start()
    known = cluster.Cluster()
    index = {}
    for i in range(bound):
        s = bound_summary(i, names[i % hosts], ipam)
        index[s.uid] = s
    t = time.perf_counter()
    folded = known.sync(index)  # the first sync reads everything; later ones only changes
    first_sync_s = time.perf_counter() - t
    cluster_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    servers = [pending_server(i, now) for i in range(pending)]
    view = binding.ClusterView(
        flavors={"tiny": FLAVOR}, images={"img": image}, hypervisors=hvs, cluster=known
    )
    if ipam:
        view = dataclasses.replace(
            view, networks={NETWORK: network()}, default_networks={"bench": ["net"]}
        )
    rec = Recorder()
    cfg = ControllerSettings()
    b = binder.Binder(cfg, cast(kube.Kube, rec))
    # The state above was made in one go; a controller gathers it over time, its collector
    # having long since moved it to the oldest generation. Do that now, so the pass is not
    # charged with the one-off collections of 100,000 objects a moment old.
    gc.collect()
    t, cpu = time.perf_counter(), time.process_time()
    b.run_pass(binder.Snapshot(view=view, pending=servers))
    if not b.wait_for_writes(timeout=600):
        raise SystemExit("the pass's bindings were not all written in 600 s")
    # CPU time of this process (the pass and its write threads): the machine's other load
    # stretches the wall time, not this.
    pass_s, pass_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    # The next pass after a change touches only what changed: one Server here.
    known.touch(next(iter(index))) if index else None
    t = time.perf_counter()
    refolded = known.sync(index)
    resync_s = time.perf_counter() - t
    check(rec, servers, known, names, bound, hosts)
    if ipam:
        check_addresses(rec, servers, bound)
    return {
        "ipam": ipam,
        "hosts": hosts,
        "bound": bound,
        "pending": pending,
        "pass_s": round(pass_s, 3),
        "pass_cpu_s": round(pass_cpu_s, 3),
        "per_decision_ms": round(1000 * pass_cpu_s / pending, 3),
        "decisions_per_s": round(pending / pass_cpu_s, 1),
        "first_sync_s": round(first_sync_s, 3),
        "first_sync_servers": folded,
        "next_sync_servers": refolded,
        "next_sync_ms": round(1000 * resync_s, 3),
        "cluster_state_mib": round(cluster_mib, 1),
        "writes": sum(len(v) for v in rec.bindings.values()),
        "events": rec.events,
    }


def check(
    rec: Recorder,
    servers: list[Server],
    known: cluster.Cluster,
    names: list[str],
    bound: int,
    hosts: int,
) -> None:
    missing = [s.full_name for s in servers if len(rec.bindings.get(s.full_name, [])) != 1]
    if missing:
        raise Failure(f"{len(missing)} pending Servers were not bound exactly once: {missing[:5]}")
    per_host = collections.Counter(h for hs in rec.bindings.values() for h in hs)
    for i, name in enumerate(names):
        already = bound // hosts + (1 if i < bound % hosts else 0)
        total = already + per_host[name]
        if total * FLAVOR.vcpus > HOST_VCPUS * 4 or total * FLAVOR.memoryMiB > HOST_MIB:
            raise Failure(f"host {name} was given more than it holds ({total} Servers)")
    claimed = known.claimed()
    on_hosts = sum(r.vcpus for r in claimed.values())
    if on_hosts != bound * FLAVOR.vcpus:
        raise Failure(f"the bound Servers' claims add up to {on_hosts} vCPUs, not {bound}")


def check_addresses(rec: Recorder, servers: list[Server], bound: int) -> None:
    """Every binding carries one address of the network, none twice, none a bound one's."""
    seen: dict[str, str] = {}
    for s in servers:
        got = rec.addresses.get(s.full_name, [])
        if len(got) != 1 or ipaddress.IPv4Address(got[0]) not in CIDR:
            raise Failure(f"{s.full_name} was bound with {got}, not one address of {CIDR}")
        ip = ipaddress.IPv4Address(got[0])
        if int(ip) - int(CIDR.network_address) - 2 < bound:
            raise Failure(f"{s.full_name} got {ip}, held by a bound Server")
        if got[0] in seen:
            raise Failure(f"{got[0]} given to both {seen[got[0]]} and {s.full_name}")
        seen[got[0]] = s.full_name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--pending", type=int, default=1000)
    p.add_argument("--bound", type=int, action="append", help="bound Servers (repeat)")
    p.add_argument(
        "--ipam",
        choices=("off", "on", "both"),
        default="off",
        help="Servers on a default tenant Network (IPAM in every decision); both: off, then on",
    )
    args = p.parse_args()
    sizes = args.bound or [0, 10000, 100000]
    if max(sizes) > args.hosts * HOST_MIB // FLAVOR.memoryMiB - args.pending:
        p.error("more Servers than the hosts hold")
    rows = []
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.ipam]
    for bound in sizes:
        for ipam in modes:
            try:
                rows.append(one_size(args.hosts, bound, args.pending, ipam))
            except Failure as exc:
                print(f"bench_scheduler: FAILED at bound={bound}: {exc}", file=sys.stderr)
                return 1
    print(
        f"{'ipam':>5} {'hosts':>6} {'bound':>8} {'pending':>8} {'pass s':>8} {'CPU s':>8} "
        f"{'ms/decision':>12} "
        f"{'decisions/s':>12} {'next sync':>10} {'cluster MiB':>12}"
    )
    for r in rows:
        print(
            f"{'on' if r['ipam'] else 'off':>5} "
            f"{r['hosts']:6d} {r['bound']:8d} {r['pending']:8d} {r['pass_s']:8.3f} "
            f"{r['pass_cpu_s']:8.3f} "
            f"{r['per_decision_ms']:12.3f} {r['decisions_per_s']:12.1f} "
            f"{r['next_sync_ms']:8.3f}ms {r['cluster_state_mib']:12.1f}"
        )
    print(
        "pass: the real Binder pass with its writes recorded, not sent (wall and CPU seconds; "
        "ms/decision and decisions/s from CPU); next sync: folding "
        "one changed Server into the incremental state; cluster MiB: that state (tracemalloc)"
    )
    first, last = rows[0], rows[-1]
    if args.ipam == "both":
        for off, on in zip(rows[::2], rows[1::2], strict=True):
            extra = on["per_decision_ms"] - off["per_decision_ms"]
            print(
                f"IPAM at bound={on['bound']}: {on['per_decision_ms']:.3f} ms per decision "
                f"vs {off['per_decision_ms']:.3f} without ({extra:+.3f} ms)"
            )
        first, last = rows[0], rows[-2]
    if len(rows) > 1 and first["per_decision_ms"] > 0 and first is not last:
        print(
            f"per decision at bound={last['bound']} vs bound={first['bound']}: "
            f"{last['per_decision_ms'] / first['per_decision_ms']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
