"""Guests on a tenant network, kubenova next to plain virsh on the same bridges in the same run:
the first TCP reply after a boot, and what a live migration costs the guest's traffic.

    python bench/bench_network.py [--runs N] [--interval S]

The bed: three libvirtd + QEMU hosts, each in its own network namespace on one underlay
(``Stack(networking=True)``; host-a and host-b share their instances folder), and a tenant
Network (VXLAN) without DHCP, so that every guest, kubenova's and virsh's alike, configures its
NIC from ``network_data.json``. One kubenova Server on the network per host keeps each host on
it (a host leaves a network when no Server of it runs there); each answers the probe before
anything is timed. The probe is a namespace this
benchmark makes, with one link into the network's bridge on host-c: its route to every guest
is that link, on-link (checked before any traffic); guests booted and moved on host-a and
host-b are reached across the overlay.

* **apply -> first TCP reply**: from the creation of a Server (on host-a, with a fixed address)
  until an HTTP GET from the probe gets the guest's page; baseline: ``virsh define`` + ``start``
  on host-a of the same domain (kubenova's domain XML with a new identity, its own overlay
  over the same image, a MAC and an address of its own outside the network's pool, written in a
  config drive of the same form), timed the same way by the same probe. Alternating.
* **live migration**: ICMP echo requests from the probe every ``--interval`` s to the guest
  while it moves between host-a and host-b: requests lost and the longest time without a
  reply, from the start of the move until 2 s after it ended; kubenova by a ServerMigration
  (until the API server shows it Succeeded), the baseline by ``virsh migrate --live --p2p``
  of the virsh guest between the same hosts over the same underlay addresses. Alternating.

Every figure counts only once checked by fresh reads: the Server ACTIVE on the host it was
put on with the address asked for and its domain running there; each ServerMigration
Succeeded, live, from and to the hosts expected, the Server ACTIVE on the target, the domain
running on the target and gone from the source; the same in libvirt for the virsh guest; a
final LIST of the Servers and ServerMigrations of the run. Otherwise it exits 1 saying what
is missing, and prints no table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client
from lxml import etree

import benchkit
from kubenova_agent import configdrive
from kubenova_agent.libvirt import domain_xml
from kubenova_agent.network import guestdata
from kubenova_api.resources import ServerSpec
from kubenova_devenv import netprobe, stack

NS = "default"
NET = "bench-net"
CIDR = ipaddress.IPv4Network("192.168.77.0/24")
GATEWAY = CIDR.network_address + 1
POOL = (CIDR.network_address + 10, CIDR.network_address + 199)
ANCHORS = {"host-a": 10, "host-b": 11, "host-c": 12}
PROBE = ipaddress.IPv4Interface(f"{CIDR.network_address + 250}/{CIDR.prefixlen}")
MOVING = ("host-a", "host-b")
SETTLE = 2.0
"""Seconds after a move ended still counted in its window."""


Move = tuple[float, int, int, float]
"""A move: (seconds, echo requests sent, lost, longest gap in s)."""


def ip_of(offset: int) -> ipaddress.IPv4Address:
    return CIDR.network_address + offset


def server_doc(name: str, host: str, ip: ipaddress.IPv4Address) -> dict[str, Any]:
    return {
        "apiVersion": benchkit.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest", "hostName": host,
                 "networks": [{"networkRef": NET, "fixedIP": str(ip)}]},
    }  # fmt: skip


class Bench:
    def __init__(self, bed: stack.Stack, api: client.ApiClient) -> None:
        self.bed, self.api = bed, api
        self.custom = client.CustomObjectsApi(api)
        self.servers = benchkit.Tracker(
            {
                "placement": lambda o: (
                    benchkit.status(o).get("nodeName"),
                    benchkit.status(o).get("phase"),
                )
            }
        )
        self.migrations = benchkit.Tracker({"phase": lambda o: benchkit.status(o).get("phase")})
        self.server_watch: benchkit.Watcher | None = None
        self.migration_watch: benchkit.Watcher | None = None
        self.probe: netprobe.Probe | None = None
        self.created: list[str] = []
        self.deleted: list[str] = []
        """Servers checked when they answered, then deleted (the boots before the last)."""
        self.moves: list[tuple[str, str, str]] = []  # (ServerMigration, source, target)
        self.raw_serial = 0
        self.backing: dict[str, tuple[str, str]] = {}
        """The template's root disk -> (its backing image, virtual size)."""

    def give_up(self) -> str | None:
        return benchkit.exited(self.bed)

    # ------------------------------------------------------------------ kubenova
    def create(self, name: str, host: str, ip: ipaddress.IPv4Address) -> None:
        self.custom.create_namespaced_custom_object(
            benchkit.GROUP, benchkit.VERSION, NS, "servers", server_doc(name, host, ip)
        )
        self.created.append(name)

    def wait_active(self, name: str, host: str, since: float, timeout: float = 180) -> None:
        assert self.server_watch is not None

        def there() -> bool:
            track = self.servers.tracks.get(name)
            return (
                track is not None and track.first("placement", (host, "ACTIVE"), since) is not None
            )

        if not self.server_watch.wait_for(there, timeout, give_up=self.give_up):
            srv = benchkit.get(self.api, "servers", NS, name)
            raise benchkit.BenchFailure(
                f"{name}: not ACTIVE on {host} after {timeout:.0f} s",
                [benchkit.describe_server(srv)],
            )

    def verify_server(self, name: str, host: str, ip: ipaddress.IPv4Address) -> tuple[str, str]:
        """By fresh reads: ``name`` ACTIVE on ``host`` with address ``ip``, its domain running
        there; its UID and MAC."""
        srv = benchkit.get(self.api, "servers", NS, name)
        st = benchkit.status(srv)
        problems = []
        if (st.get("nodeName"), st.get("phase")) != (host, "ACTIVE"):
            problems.append(f"{name}: {benchkit.describe_server(srv)} on {st.get('nodeName')}")
        addresses = st.get("addresses") or []
        if [a.get("ip") for a in addresses] != [str(ip)]:
            problems.append(f"{name}: addresses {addresses}, not {ip}")
        uid = str((srv or {}).get("metadata", {}).get("uid", ""))
        state = benchkit.domain_state(self.bed.hosts[host], uid) if uid else "absent"
        if state != "running":
            problems.append(f"{name}: its domain is {state} on {host}")
        benchkit.fail_if(problems, f"{name}: the work that was timed did not happen")
        return uid, str(addresses[0].get("mac"))

    def boot_kubenova(self, name: str, host: str, ip: ipaddress.IPv4Address) -> float:
        assert self.probe is not None
        with self.probe.first_reply(ip, 80, f"kubenova-www {name}", 240) as reply:
            t0 = time.monotonic()
            self.create(name, host, ip)
        self.wait_active(name, host, t0)
        self.verify_server(name, host, ip)
        return float(reply.result.at) - t0

    def migrate_kubenova(
        self, name: str, server: str, ip: ipaddress.IPv4Address, source: str, target: str,
        interval: float,
    ) -> Move:  # fmt: skip
        """(seconds to Succeeded, requests sent, lost, longest gap) of a ServerMigration."""
        assert self.probe is not None and self.migration_watch is not None
        body = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "ServerMigration",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"serverRef": server, "targetNode": target},
        }
        with self.probe.ping(ip, interval) as stream:
            time.sleep(1.0)
            t0 = time.monotonic()
            self.custom.create_namespaced_custom_object(
                benchkit.GROUP, benchkit.VERSION, NS, "servermigrations", body
            )
            self.moves.append((name, source, target))

            def ended() -> bool:
                track = self.migrations.tracks.get(name)
                return track is not None and track.now("phase") in ("Succeeded", "Failed")

            if not self.migration_watch.wait_for(ended, 300, give_up=self.give_up):
                raise benchkit.BenchFailure(f"{name}: did not end within 300 s", [self.why(name)])
            done = self.migrations.tracks[name].first("phase", "Succeeded")
            if done is None:
                raise benchkit.BenchFailure(f"{name}: Failed", [self.why(name)])
            time.sleep(SETTLE)
        self.wait_active(server, target, t0, 120)
        self.verify_move(name, server, ip, source, target)
        result: netprobe.PingResult = stream.result
        end = done.at + SETTLE
        return (done.at - t0, result.sent_between(t0, end), result.lost_between(t0, end),
                result.longest_gap(t0, end))  # fmt: skip

    def why(self, name: str) -> str:
        st = benchkit.status(benchkit.get(self.api, "servermigrations", NS, name))
        return f"phase {st.get('phase')}, reason {st.get('reason')}: {st.get('message')}"

    def verify_move(
        self, name: str, server: str, ip: ipaddress.IPv4Address, source: str, target: str
    ) -> None:
        st = benchkit.status(benchkit.get(self.api, "servermigrations", NS, name))
        seen = (st.get("phase"), st.get("sourceNode"), st.get("targetNode"), st.get("live"))
        problems = []
        if seen != ("Succeeded", source, target, True):
            problems.append(f"{name}: phase, source, target, live = {seen}")
        benchkit.fail_if(problems, f"{name}: timed, but did not happen")
        uid, _ = self.verify_server(server, target, ip)
        if benchkit.domain_state(self.bed.hosts[source], uid) != "absent":
            raise benchkit.BenchFailure(f"{name}: the domain is still on {source}", [])

    # ------------------------------------------------------------------ virsh
    def raw_domain(self, template: str, host: str, ip: ipaddress.IPv4Address) -> tuple[str, str]:
        """Kubenova's domain XML ``template`` with a new identity, its own overlay over the
        same image and its own config drive (``ip``, a MAC of its own; same form as
        kubenova's): (name, path of the XML), to define on ``host``."""
        self.raw_serial += 1
        name = f"bench-raw-{self.raw_serial}"
        uid = str(uuidlib.uuid4())
        mac = f"fa:16:3e:77:00:{self.raw_serial:02x}"
        root = etree.fromstring(template.encode())
        root.find("name").text = name  # type: ignore[union-attr]
        root.find("uuid").text = uid  # type: ignore[union-attr]
        for tag in ("metadata", "title"):  # no kubenova metadata: the agents leave it alone
            el = root.find(tag)
            if el is not None:
                root.remove(el)
        src = self.bed.hosts[host]
        folder = "/var/lib/kubenova/instances"  # shared by host-a and host-b
        for disk in root.findall("devices/disk"):
            source = disk.find("source")
            assert source is not None
            path = str(source.get("file"))
            if path.endswith("config.iso"):
                inside = f"{folder}/{name}-config.iso"
                data = guestdata.Nic(port_id=uid, network_id=NET, mac=mac, ip=ip, cidr=CIDR,
                                     gateway=GATEWAY, mtu=1450)  # fmt: skip
                configdrive.write(
                    str(src.outside(inside)),
                    {"uuid": uid, "name": name, "hostname": name, "files": [], "meta": {}},
                    ServerSpec(flavorRef="m1.tiny", imageRef="kubenova-guest"),
                    guestdata.network_data([data]),
                )
                source.set("file", inside)
            else:
                if path not in self.backing:  # read once: the template's Server may be gone
                    info = json.loads(subprocess.run(
                        ["qemu-img", "info", "-U", "--output=json", str(src.outside(path))],
                        capture_output=True, text=True, check=True,
                    ).stdout)  # fmt: skip
                    self.backing[path] = (info["backing-filename"], str(info["virtual-size"]))
                backing, size = self.backing[path]
                inside = f"{folder}/{name}.qcow2"
                subprocess.run(
                    ["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b",
                     backing, str(src.outside(inside)), size],
                    check=True,
                )  # fmt: skip
                source.set("file", inside)
        (nic,) = root.findall("devices/interface")
        nic.find("mac").set("address", mac)  # type: ignore[union-attr]
        for tag in ("target", "alias"):
            el = nic.find(tag)
            if el is not None:
                nic.remove(el)
        serial = root.find("devices/serial/source")
        assert serial is not None
        serial.set("path", f"/var/lib/kubenova/consoles/{name}.log")
        xml = self.bed.workdir / f"{name}.xml"
        xml.write_bytes(etree.tostring(root))
        return name, str(xml)

    def boot_virsh(self, template: str, host: str, ip: ipaddress.IPv4Address) -> tuple[str, float]:
        assert self.probe is not None
        name, xml = self.raw_domain(template, host, ip)
        with self.probe.first_reply(ip, 80, f"kubenova-www {name}", 240) as reply:
            t0 = time.monotonic()
            self.bed.hosts[host].virsh("define", xml)
            self.bed.hosts[host].virsh("start", name)
        state = benchkit.domain_state(self.bed.hosts[host], name)
        if state != "running":
            raise benchkit.BenchFailure(f"{name}: answered, but its domain is {state}", [])
        return name, float(reply.result.at) - t0

    def drop_virsh(self, name: str, host: str) -> None:
        h = self.bed.hosts[host]
        h.virsh("destroy", name, check=False)
        h.virsh("undefine", name, check=False)
        for suffix in (".qcow2", "-config.iso"):
            h.outside(f"/var/lib/kubenova/instances/{name}{suffix}").unlink(missing_ok=True)

    def migrate_virsh(
        self, name: str, ip: ipaddress.IPv4Address, source: str, target: str, interval: float
    ) -> Move:
        assert self.probe is not None
        args = ["migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--unsafe",
                name, self.bed.hosts[target].uri,
                "--migrateuri", f"tcp://{self.bed.migration_address(target)}"]  # fmt: skip
        with self.probe.ping(ip, interval) as stream:
            time.sleep(1.0)
            t0 = time.monotonic()
            self.bed.hosts[source].virsh(*args, timeout=300)
            t1 = time.monotonic()
            time.sleep(SETTLE)
        on = (benchkit.domain_state(self.bed.hosts[target], name),
              benchkit.domain_state(self.bed.hosts[source], name))  # fmt: skip
        if on != ("running", "absent"):
            raise benchkit.BenchFailure(
                f"virsh migrate of {name} {source} -> {target} did not happen",
                [f"libvirt: {on[0]} on {target}, {on[1]} on {source}"],
            )
        result: netprobe.PingResult = stream.result
        end = t1 + SETTLE
        return (t1 - t0, result.sent_between(t0, end), result.lost_between(t0, end),
                result.longest_gap(t0, end))  # fmt: skip

    # ------------------------------------------------------------------ the final LIST
    def verify_all(self, expected_placement: dict[str, str]) -> None:
        items, _ = benchkit.list_all(benchkit.lister(self.api, "servers", NS))
        by_name = {o["metadata"]["name"]: o for o in items}
        problems = []
        for name in self.created:
            obj = by_name.get(name)
            if name in self.deleted:
                if obj is not None:
                    problems.append(f"{name}: deleted, but still in the LIST")
                continue
            if obj is None:
                problems.append(f"{name}: missing from the LIST")
                continue
            if self.servers.tracks.get(name) is None or not any(
                phase == "ACTIVE" for _, phase in self.servers.tracks[name].values("placement")
            ):
                problems.append(f"{name}: the watch never saw it ACTIVE")
        for name, host in expected_placement.items():
            st = benchkit.status(by_name.get(name))
            if (st.get("nodeName"), st.get("phase")) != (host, "ACTIVE"):
                problems.append(f"{name}: {st.get('phase')} on {st.get('nodeName')}, not {host}")
        migs, _ = benchkit.list_all(benchkit.lister(self.api, "servermigrations", NS))
        by_mig = {o["metadata"]["name"]: benchkit.status(o) for o in migs}
        for name, source, target in self.moves:
            st = by_mig.get(name, {})
            seen = (st.get("phase"), st.get("sourceNode"), st.get("targetNode"))
            if seen != ("Succeeded", source, target):
                problems.append(f"{name}: {seen}, not Succeeded {source} -> {target}")
        benchkit.fail_if(problems, "the final LIST does not show all the work that was timed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between echo requests")
    args = p.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-net-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=3, shared_instances=MOVING, networking=True)
    boots: list[tuple[float, float]] = []
    moves: list[tuple[Move, Move]] = []
    with bed:
        api = benchkit.api_client(bed)
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        network = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "Network",
            "metadata": {"name": NET, "namespace": NS},
            "spec": {"cidr": str(CIDR), "dhcp": False,
                     "allocationPools": [{"start": str(POOL[0]), "end": str(POOL[1])}]},
        }  # fmt: skip
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(network))
        benchkit.wait_hosts_ready(bed, api, list(bed.hosts))
        b = Bench(bed, api)
        with (
            benchkit.watch(f"Servers in {NS}", benchkit.lister(api, "servers", NS), b.servers)
            as b.server_watch,
            benchkit.watch(f"ServerMigrations in {NS}",
                           benchkit.lister(api, "servermigrations", NS), b.migrations)
            as b.migration_watch,
        ):  # fmt: skip
            t0 = time.monotonic()
            for host, offset in ANCHORS.items():
                b.create(f"anchor-{host}", host, ip_of(offset))
            for host in ANCHORS:
                b.wait_active(f"anchor-{host}", host, t0)
            uid, _ = b.verify_server("anchor-host-c", "host-c", ip_of(ANCHORS["host-c"]))
            xml = bed.hosts["host-c"].virsh("dumpxml", uid)
            (nic,) = domain_xml.interfaces_of(xml)
            assert bed.net is not None
            b.probe = netprobe.Probe(bed.net.hosts["host-c"].netns, nic.bridge, PROBE)
            with b.probe:
                # Every anchor's guest answers (across the overlay for host-a's and host-b's)
                # before anything is timed: their boots do not share the cores with it.
                for host, offset in ANCHORS.items():
                    with b.probe.first_reply(ip_of(offset), 80, f"kubenova-www anchor-{host}", 240):
                        pass
                boots, moves = run(b, args.runs, args.interval)
                b.verify_all({"bench-mover": MOVING[args.runs % 2]})
    report(boots, moves, args.interval)
    return 0


def run(
    b: Bench, runs: int, interval: float
) -> tuple[list[tuple[float, float]], list[tuple[Move, Move]]]:
    boots: list[tuple[float, float]] = []
    template = ""
    raw = ""
    host = MOVING[0]
    for i in range(runs):
        last = i == runs - 1
        name = "bench-mover" if last else f"bench-boot-{i}"
        ip = ip_of(20 + i)
        kn = b.boot_kubenova(name, host, ip)
        if not template:
            uid, _ = b.verify_server(name, host, ip)
            template = b.bed.hosts[host].virsh("dumpxml", "--inactive", uid)
        raw, vs = b.boot_virsh(template, host, ip_of(200 + i))
        boots.append((kn, vs))
        print(f"boot {i}: apply -> first TCP reply {kn:.2f}s | virsh define+start -> "
              f"first TCP reply {vs:.2f}s", flush=True)  # fmt: skip
        if not last:
            b.bed.kubectl("delete", "server", name, "-n", NS, "--timeout=60s")
            b.deleted.append(name)
            b.drop_virsh(raw, host)
    mover_ip, raw_ip = ip_of(20 + runs - 1), ip_of(200 + runs - 1)
    moves: list[tuple[Move, Move]] = []
    where = host
    for i in range(runs):
        target = MOVING[1] if where == MOVING[0] else MOVING[0]
        km = b.migrate_kubenova(f"bench-mig-{i}", "bench-mover", mover_ip, where, target,
                                interval)  # fmt: skip
        vm = b.migrate_virsh(raw, raw_ip, where, target, interval)
        moves.append((km, vm))
        print(f"move {i} {where} -> {target}: kubenova {km[0]:.2f}s, {km[2]}/{km[1]} lost, "
              f"longest gap {km[3] * 1000:.0f} ms | virsh {vm[0]:.2f}s, {vm[2]}/{vm[1]} lost, "
              f"longest gap {vm[3] * 1000:.0f} ms", flush=True)  # fmt: skip
        where = target
    b.drop_virsh(raw, where)
    return boots, moves


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 1.0


def report(
    boots: list[tuple[float, float]],
    moves: list[tuple[Move, Move]],
    interval: float,
) -> None:
    med: Callable[[list[float]], float] = statistics.median
    kb, vb = med([k for k, _ in boots]), med([v for _, v in boots])
    kl, vl = med([float(k[2]) for k, _ in moves]), med([float(v[2]) for _, v in moves])
    kg, vg = med([k[3] for k, _ in moves]), med([v[3] for _, v in moves])
    kt, vt = med([k[0] for k, _ in moves]), med([v[0] for _, v in moves])
    print(f"\ntenant network (VXLAN), median of {len(boots)} (2 cores, TCG guest, 128 MiB); "
          f"probe on host-c, echo every {interval * 1000:.0f} ms")  # fmt: skip
    print(f"{'':34} {'kubenova':>10} {'virsh':>10} {'ratio':>7}")
    print(f"{'boot -> first TCP reply (s)':34} {kb:10.2f} {vb:10.2f} {_ratio(kb, vb):7.2f}")
    print(f"{'live migration: requests lost':34} {kl:10.0f} {vl:10.0f} {_ratio(kl, vl):7.2f}")
    print(f"{'live migration: longest gap (ms)':34} {kg * 1000:10.0f} {vg * 1000:10.0f} "
          f"{_ratio(kg, vg):7.2f}")  # fmt: skip
    print(f"{'live migration: duration (s)':34} {kt:10.2f} {vt:10.2f} {_ratio(kt, vt):7.2f}")
    print(json.dumps({
        "runs": len(boots),
        "interval_s": interval,
        "kubenova_first_reply_s": round(kb, 3),
        "virsh_first_reply_s": round(vb, 3),
        "first_reply_ratio": round(_ratio(kb, vb), 2),
        "kubenova_lost": kl,
        "virsh_lost": vl,
        "kubenova_longest_gap_ms": round(kg * 1000),
        "virsh_longest_gap_ms": round(vg * 1000),
        "gap_ratio": round(_ratio(kg, vg), 2),
        "kubenova_migration_s": round(kt, 3),
        "virsh_migration_s": round(vt, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
