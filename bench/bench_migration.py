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

Every move counts only once it is checked, by fresh reads: the ServerMigration Succeeded from
the expected source to the expected target, live, in the mode measured (block or not), with
libvirt's downtime; the Server ACTIVE on the target; the domain running in the target's
libvirt and gone from the source's; the same for the virsh guest. Otherwise it exits 1 saying
which run and what is missing, and prints no table.
"""

from __future__ import annotations

import argparse
import functools
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

import benchkit
from kubenova_devenv import stack

NS = "default"
NAME = "bench-mig"
RAW = "bench-raw"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--block", action="store_true", help="hosts without shared storage")
    args = p.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-mig-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(
        work,
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
        api = benchkit.api_client(bed)
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        server = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "Server",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest", "hostName": "host-a"},
        }
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(server))
        bed.kubectl("wait", "--for=condition=Ready", f"server/{NAME}", "--timeout=120s")
        srv = benchkit.get(api, "servers", NS, NAME)
        assert srv is not None
        uid = srv["metadata"]["uid"]
        bed.wait_console("host-a", uid, "kubenova-uptime 2")
        benchkit.wait_hosts_ready(bed, api, list(bed.hosts))
        raw_host, overlay = make_raw_guest(bed, uid, args.block)
        time.sleep(3)  # let the raw guest boot as far as the managed one

        servers = benchkit.Tracker(
            {
                "placement": lambda o: (
                    benchkit.status(o).get("nodeName"),
                    benchkit.status(o).get("phase"),
                )
            }
        )
        migrations = benchkit.Tracker({"phase": lambda o: benchkit.status(o).get("phase")})
        with (
            benchkit.watch(
                f"Server {NAME}",
                benchkit.lister(api, "servers", NS),
                servers,
                field_selector=f"metadata.name={NAME}",
            ) as server_watch,
            benchkit.watch(
                f"ServerMigrations in {NS}",
                benchkit.lister(api, "servermigrations", NS),
                migrations,
            ) as migration_watch,
        ):
            move = Mover(bed, api, uid, servers, server_watch, migrations, migration_watch)
            where = "host-a"
            for i in range(args.runs):
                target = "host-b" if where == "host-a" else "host-a"
                total, active, status = move.kubenova(f"mig-{i}", where, target, args.block)
                kn_total.append(total)
                kn_active.append(active)
                kn_down.append(float(status["progress"]["downtimeMs"]))
                kn_data.append(int(status["progress"].get("dataProcessedBytes", 0)))
                where = target
                raw_target = "host-b" if raw_host == "host-a" else "host-a"
                seconds, downtime = virsh_migration(bed, raw_host, raw_target, overlay, i)
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


class Mover:
    """Moves the managed guest with ServerMigrations, timed by watches, checked by fresh
    reads and libvirt."""

    def __init__(
        self,
        bed: stack.Stack,
        api: client.ApiClient,
        uid: str,
        servers: benchkit.Tracker,
        server_watch: benchkit.Watcher,
        migrations: benchkit.Tracker,
        migration_watch: benchkit.Watcher,
    ) -> None:
        self.bed, self.api, self.uid = bed, api, uid
        self.servers, self.server_watch = servers, server_watch
        self.migrations, self.migration_watch = migrations, migration_watch

    def kubenova(
        self, name: str, source: str, target: str, block: bool
    ) -> tuple[float, float, dict[str, Any]]:
        """Seconds until the ServerMigration ``name`` is Succeeded and until the Server is
        ACTIVE on ``target``, and the migration's status."""
        body = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "ServerMigration",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"serverRef": NAME, "targetNode": target},
        }
        what = f"{name} ({source} -> {target})"
        give_up = functools.partial(benchkit.exited, self.bed)
        t0 = time.monotonic()
        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            benchkit.GROUP, benchkit.VERSION, NS, "servermigrations", body
        )

        def ended() -> bool:
            track = self.migrations.tracks.get(name)
            return track is not None and track.now("phase") in ("Succeeded", "Failed")

        if not self.migration_watch.wait_for(ended, 300, give_up=give_up):
            raise benchkit.BenchFailure(f"{what}: did not end within 300 s", [self.describe(name)])
        succeeded = self.migrations.tracks[name].first("phase", "Succeeded")
        if succeeded is None:
            raise benchkit.BenchFailure(f"{what}: Failed", [self.describe(name)])

        def arrived() -> bool:
            track = self.servers.tracks.get(NAME)
            return (
                track is not None and track.first("placement", (target, "ACTIVE"), t0) is not None
            )

        if not self.server_watch.wait_for(arrived, 120, give_up=give_up):
            srv = benchkit.get(self.api, "servers", NS, NAME)
            raise benchkit.BenchFailure(
                f"{what}: Succeeded, but the Server is not ACTIVE on {target}",
                [benchkit.describe_server(srv)],
            )
        active = self.servers.tracks[NAME].first("placement", (target, "ACTIVE"), t0)
        assert active is not None
        status = self.verify(name, source, target, block)
        return succeeded.at - t0, active.at - t0, status

    def describe(self, name: str) -> str:
        st = benchkit.status(benchkit.get(self.api, "servermigrations", NS, name))
        return f"phase {st.get('phase')}, reason {st.get('reason')}: {st.get('message')}"

    def verify(self, name: str, source: str, target: str, block: bool) -> dict[str, Any]:
        """By fresh reads: what the migration, the Server and both hosts' libvirt say."""
        st = benchkit.status(benchkit.get(self.api, "servermigrations", NS, name))
        srv = benchkit.get(self.api, "servers", NS, NAME)
        problems = []
        seen = (st.get("phase"), st.get("sourceNode"), st.get("targetNode"), st.get("live"))
        if seen != ("Succeeded", source, target, True):
            problems.append(f"ServerMigration: phase, source, target, live = {seen}")
        if bool(st.get("blockMigration")) != block:
            problems.append(f"ServerMigration: blockMigration={st.get('blockMigration')}")
        if (st.get("progress") or {}).get("downtimeMs") is None:
            problems.append("ServerMigration: no downtime reported")
        placement = (benchkit.status(srv).get("nodeName"), benchkit.status(srv).get("phase"))
        if placement != (target, "ACTIVE"):
            problems.append(f"Server: {benchkit.describe_server(srv)} on {placement[0]}")
        on_target = benchkit.domain_state(self.bed.hosts[target], self.uid)
        on_source = benchkit.domain_state(self.bed.hosts[source], self.uid)
        if (on_target, on_source) != ("running", "absent"):
            problems.append(f"libvirt: {on_target} on {target}, {on_source} on {source}")
        benchkit.fail_if(problems, f"{name} ({source} -> {target}): timed, but did not happen")
        return st


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
    bed: stack.Stack, source: str, target: str, overlay: list[str] | None, run: int
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
    problems = []
    if found is None:
        problems.append(f"no downtime in virsh domjobinfo on {target}:\n{info}")
    on_target = benchkit.domain_state(bed.hosts[target], RAW)
    on_source = benchkit.domain_state(bed.hosts[source], RAW)
    if (on_target, on_source) != ("running", "absent"):
        problems.append(f"libvirt: {on_target} on {target}, {on_source} on {source}")
    benchkit.fail_if(problems, f"run {run}: virsh migrate {source} -> {target} did not happen")
    assert found is not None
    if overlay is not None:
        *cmd, inside, size = overlay
        path = bed.hosts[source].outside(inside)
        path.unlink()
        subprocess.run([*cmd, str(path), size], check=True)
    return seconds, float(found.group(1))


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
