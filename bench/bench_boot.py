"""Apply -> ACTIVE through kubenova, against the same domain started with plain virsh on the
same host in the same run (define + start of the same XML over an identical overlay).

    python bench/bench_boot.py [--runs N]

Prints each figure and the ratio kubenova / virsh. The first kubenova boot on a host also
fetches the image ("cold"); the others find it cached ("warm"), as the virsh baseline does.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

import yaml
from kubernetes import client, watch
from lxml import etree

from kubenova_api import constants, kube
from kubenova_devenv import guestimage, stack


def wait_active(api: client.CustomObjectsApi, namespace: str, name: str, rv: str) -> float:
    """Seconds until the Server's status says ACTIVE (from a watch: no polling delay)."""
    w = watch.Watch()
    for event in w.stream(
        api.list_namespaced_custom_object,
        constants.GROUP,
        constants.VERSION,
        namespace,
        constants.SERVERS,
        field_selector=f"metadata.name={name}",
        resource_version=rv,
        timeout_seconds=180,
    ):
        if (event["object"].get("status") or {}).get("phase") == "ACTIVE":
            w.stop()
            return time.monotonic()
    raise TimeoutError(f"{name} did not become ACTIVE")


def server_doc(name: str) -> dict:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest"},
    }


def virsh_baseline(bed: stack.Stack, host_name: str, template_xml: str) -> tuple[float, float]:
    """Define + start the same domain with plain virsh; returns (define+start, to console)."""
    host = bed.hosts[host_name]
    root = etree.fromstring(template_xml.encode())
    new_uuid = str(uuidlib.uuid4())
    root.find("uuid").text = new_uuid  # type: ignore[union-attr]
    root.find("name").text = f"baseline-{new_uuid}"  # type: ignore[union-attr]
    metadata = root.find("metadata")
    if metadata is not None:
        root.remove(metadata)
    disk_src = root.find("devices/disk/source")
    overlay_inside = f"/var/lib/kubenova/instances/baseline-{new_uuid}.qcow2"
    backing = subprocess.run(
        [*host.nsenter(), "qemu-img", "info", "-U", "--output=json", disk_src.get("file")],  # type: ignore[union-attr,list-item]
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    backing_file = yaml.safe_load(backing)["backing-filename"]
    subprocess.run(
        [
            *host.nsenter(),
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            backing_file,
            overlay_inside,
            "1G",
        ],
        check=True,
    )
    disk_src.set("file", overlay_inside)  # type: ignore[union-attr]
    console_inside = f"/var/lib/kubenova/consoles/baseline-{new_uuid}.log"
    root.find("devices/serial/source").set("path", console_inside)  # type: ignore[union-attr]
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(etree.tostring(root, encoding="unicode"))
    t0 = time.monotonic()
    host.virsh("define", f.name)
    host.virsh("start", new_uuid)
    t1 = time.monotonic()
    console = host.outside(console_inside)
    while guestimage.MARKER not in (console.read_text() if console.exists() else ""):
        time.sleep(0.02)
    t2 = time.monotonic()
    host.virsh("destroy", new_uuid)
    host.virsh("undefine", new_uuid)
    subprocess.run([*host.nsenter(), "rm", "-f", overlay_inside, console_inside], check=True)
    return t1 - t0, t2 - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-"))
    bed = stack.Stack(work, host_count=1)
    rows: list[tuple[str, float, float, float, float]] = []
    with bed:
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        time.sleep(3)  # the host's first heartbeat (libvirt probing QEMU) is not what we time
        api = client.CustomObjectsApi(kube.api_client(str(bed.cp.kubeconfig())))
        for i in range(args.runs + 1):
            name = f"bench-{i}"
            body = server_doc(name)
            t0 = time.monotonic()
            created = api.create_namespaced_custom_object(
                constants.GROUP, constants.VERSION, "default", constants.SERVERS, body
            )
            t_active = wait_active(api, "default", name, created["metadata"]["resourceVersion"])
            srv = bed.get("server", name, "default")
            assert srv is not None
            uid, host = srv["metadata"]["uid"], srv["status"]["nodeName"]
            bed.wait_console(host, uid, guestimage.MARKER, timeout=120)
            t_console = time.monotonic()
            xml = bed.hosts[host].virsh("dumpxml", "--inactive", uid)
            v_start, v_console = virsh_baseline(bed, host, xml)
            label = "cold" if i == 0 else "warm"
            rows.append((label, t_active - t0, v_start, t_console - t0, v_console))
            bed.kubectl("delete", "server", name, "-n", "default", "--timeout=60s")
    print(
        f"{'run':6} {'apply->ACTIVE':>14} {'virsh define+start':>19} {'ratio':>7} "
        f"{'apply->console':>15} {'virsh->console':>15} {'ratio':>7}"
    )
    for label, active, vstart, console, vconsole in rows:
        print(
            f"{label:6} {active:14.3f} {vstart:19.3f} {active / vstart:7.2f} "
            f"{console:15.3f} {vconsole:15.3f} {console / vconsole:7.2f}"
        )
    warm = rows[1:]
    if warm:
        med = [statistics.median(r[k] for r in warm) for k in range(1, 5)]
        print(
            f"{'median':6} {med[0]:14.3f} {med[1]:19.3f} {med[0] / med[1]:7.2f} "
            f"{med[2]:15.3f} {med[3]:15.3f} {med[2] / med[3]:7.2f}  (warm runs: {len(warm)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
