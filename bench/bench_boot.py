"""Apply -> ACTIVE through kubenova, against the same domain started with plain virsh on the
same host in the same run (define + start of the same XML over an identical overlay).

    python bench/bench_boot.py [--runs N] [--images uec,bios,uefi]

Prints each figure and the ratio kubenova / virsh. The first kubenova boot on a host also
fetches the image ("cold"); the others find it cached ("warm"), as the virsh baseline does.
``--images`` picks the test guest's forms: ``uec`` (kernel + initrd booted directly), ``bios``
(a disk with SYSLINUX, SeaBIOS) and ``uefi`` (a disk with GRUB, OVMF; the baseline gets a
variable store of its own from the same template).

Every run is checked before it counts, by fresh reads: the Server ACTIVE and Ready on the host
the watch saw it bound to (and only that one), its domain running in that host's libvirt, the
guest's boot marker on its console; the baseline's domain running and its marker seen.
Otherwise it exits 1 saying which run and what is missing, and prints no table.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
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
from kubenova_devenv import guestimage, stack

NS = "default"


IMAGES = {"uec": "kubenova-guest", "bios": "kubenova-guest-bios", "uefi": "kubenova-guest-uefi"}


def server_doc(name: str, image: str = "kubenova-guest") -> dict[str, Any]:
    # UEFI (OVMF + GRUB loading a 14 MiB kernel) needs more than m1.tiny's 128 MiB.
    flavor = "m1.small" if image.endswith("-uefi") else "m1.tiny"
    return {
        "apiVersion": benchkit.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"flavorRef": flavor, "imageRef": image},
    }


def verify_boot(
    bed: stack.Stack,
    api: client.ApiClient,
    name: str,
    uid: str,
    host: str,
    tracker: benchkit.Tracker,
) -> None:
    """By fresh reads: the Server ``name`` (``uid``) is ACTIVE and Ready on ``host``, bound
    once, and its domain runs in that host's libvirt."""
    srv = benchkit.get(api, "servers", NS, name)
    problems = benchkit.verify_servers(api, NS, [name], tracker)
    if benchkit.condition(srv, "Ready").get("status") != "True":
        problems.append(f"{name}: not Ready ({benchkit.describe_server(srv)})")
    if srv is not None and (srv["metadata"]["uid"], benchkit.status(srv).get("nodeName")) != (
        uid,
        host,
    ):
        problems.append(f"{name}: the LIST shows another object or host than the watch did")
    state = benchkit.domain_state(bed.hosts[host], uid)
    if state != "running":
        problems.append(f"{name}: ACTIVE on {host}, but its domain {uid} is {state} there")
    benchkit.fail_if(problems, f"{name}: the boot that was timed did not happen")


def virsh_baseline(bed: stack.Stack, host_name: str, template_xml: str) -> tuple[float, float]:
    """Define + start the same domain with plain virsh; returns (define+start, to console)."""
    host = bed.hosts[host_name]
    root = etree.fromstring(template_xml.encode())
    new_uuid = str(uuidlib.uuid4())
    root.find("uuid").text = new_uuid  # type: ignore[union-attr]
    root.find("name").text = f"baseline-{new_uuid}"  # type: ignore[union-attr]
    for tag in ("metadata", "title"):  # no kubenova metadata: the agent leaves it alone
        el = root.find(tag)
        if el is not None:
            root.remove(el)
    disk_src = root.find("devices/disk/source")
    assert disk_src is not None
    overlay_inside = f"/var/lib/kubenova/instances/baseline-{new_uuid}.qcow2"
    backing = subprocess.run(
        [*host.nsenter(), "qemu-img", "info", "-U", "--output=json", str(disk_src.get("file"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    backing_file = yaml.safe_load(backing)["backing-filename"]
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing_file]
    subprocess.run([*host.nsenter(), *create, overlay_inside, "1G"], check=True)
    disk_src.set("file", overlay_inside)
    console_inside = f"/var/lib/kubenova/consoles/baseline-{new_uuid}.log"
    root.find("devices/serial/source").set("path", console_inside)  # type: ignore[union-attr]
    nvram = root.find("os/nvram")
    nvram_inside = f"/var/lib/kubenova/instances/baseline-{new_uuid}-nvram.fd"
    if nvram is not None:  # UEFI: a store of its own, from the same template, on first start
        nvram.text = nvram_inside
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(etree.tostring(root, encoding="unicode"))
    console = host.outside(console_inside)
    t0 = time.monotonic()
    host.virsh("define", f.name)
    host.virsh("start", new_uuid)
    t1 = time.monotonic()
    t2 = benchkit.wait_text(
        lambda: console.read_text(errors="replace") if console.exists() else "",
        guestimage.MARKER,
        120,
        f"the console of the virsh baseline {new_uuid}",
    )
    state = benchkit.domain_state(host, new_uuid)
    host.virsh("destroy", new_uuid)
    host.virsh("undefine", new_uuid, *(["--nvram"] if nvram is not None else []))
    subprocess.run(
        [*host.nsenter(), "rm", "-f", overlay_inside, console_inside, nvram_inside], check=True
    )
    pathlib.Path(f.name).unlink()
    if state != "running":
        raise benchkit.BenchFailure(f"the virsh baseline's domain was {state}, not running", [])
    return t1 - t0, t2 - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5, help="warm runs (after one cold run)")
    p.add_argument(
        "--images", default="uec", help="comma-separated forms of the guest: uec, bios, uefi"
    )
    args = p.parse_args()
    kinds = [k.strip() for k in args.images.split(",") if k.strip()]
    if not kinds or any(k not in IMAGES for k in kinds):
        p.error(f"--images: choose from {', '.join(IMAGES)}")
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=1)
    rows: list[tuple[str, float, float, float, float]] = []
    with bed:
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        small = {
            "apiVersion": benchkit.API_VERSION,
            "kind": "Flavor",
            "metadata": {"name": "m1.small"},
            "spec": {"vcpus": 1, "memoryMiB": 256, "diskGiB": 1},
        }
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(small))
        images = [bed.image_manifest()]
        images += [bed.boot_disk_manifest("bios"), bed.boot_disk_manifest("uefi")]
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(images))
        api = benchkit.api_client(bed)
        # The host's first heartbeat (libvirt probing QEMU) is not what we time.
        benchkit.wait_hosts_ready(bed, api, list(bed.hosts))
        custom = client.CustomObjectsApi(api)
        tracker = benchkit.server_tracker()
        servers = benchkit.lister(api, "servers", NS)
        with benchkit.watch(f"Servers in {NS}", servers, tracker) as watcher:
            plan = [(kind, i) for kind in kinds for i in range(args.runs + 1)]
            for kind, i in plan:
                name = f"bench-{kind}-{i}"
                label = ("cold" if i == 0 else "warm") + ("" if kind == "uec" else f"-{kind}")
                t0 = time.monotonic()
                custom.create_namespaced_custom_object(
                    benchkit.GROUP, benchkit.VERSION, NS, "servers", server_doc(name, IMAGES[kind])
                )

                def active(name: str = name) -> bool:
                    track = tracker.tracks.get(name)
                    return track is not None and track.first("phase", "ACTIVE") is not None

                if not watcher.wait_for(active, 180, give_up=lambda: benchkit.exited(bed)):
                    srv = benchkit.get(api, "servers", NS, name)
                    raise benchkit.BenchFailure(
                        f"run {i} ({label}): {name} not ACTIVE after 180 s",
                        [benchkit.describe_server(srv)],
                    )
                track = tracker.tracks[name]
                first_active = track.first("phase", "ACTIVE")
                assert first_active is not None and track.uid is not None
                t_active = first_active.at
                uid, host = track.uid, str(track.now("nodeName"))  # from the watch: no delay
                t_console = benchkit.wait_text(
                    functools.partial(bed.console, host, uid),
                    guestimage.MARKER,
                    120,
                    f"run {i} ({label}): the console of {name}",
                )
                verify_boot(bed, api, name, uid, host, tracker)
                xml = bed.hosts[host].virsh("dumpxml", "--inactive", uid)
                v_start, v_console = virsh_baseline(bed, host, xml)
                rows.append((label, t_active - t0, v_start, t_console - t0, v_console))
                bed.kubectl("delete", "server", name, "-n", NS, "--timeout=60s")
    print(
        f"{'run':6} {'apply->ACTIVE':>14} {'virsh define+start':>19} {'ratio':>7} "
        f"{'apply->console':>15} {'virsh->console':>15} {'ratio':>7}"
    )
    for label, active_s, vstart, console, vconsole in rows:
        print(
            f"{label:6} {active_s:14.3f} {vstart:19.3f} {active_s / vstart:7.2f} "
            f"{console:15.3f} {vconsole:15.3f} {console / vconsole:7.2f}"
        )
    for kind in kinds:
        suffix = "" if kind == "uec" else f"-{kind}"
        _median(kind, [r for r in rows if r[0] == f"warm{suffix}"])
    return 0


def _median(kind: str, warm: list[tuple[str, float, float, float, float]]) -> None:
    label = "median" if kind == "uec" else f"median-{kind}"
    if warm:
        med = [
            statistics.median(column)
            for column in (
                [r[1] for r in warm],
                [r[2] for r in warm],
                [r[3] for r in warm],
                [r[4] for r in warm],
            )
        ]
        print(
            f"{label:6} {med[0]:14.3f} {med[1]:19.3f} {med[0] / med[1]:7.2f} "
            f"{med[2]:15.3f} {med[3]:15.3f} {med[2] / med[3]:7.2f}  (warm runs: {len(warm)})"
        )


if __name__ == "__main__":
    sys.exit(benchkit.run_main(main))
