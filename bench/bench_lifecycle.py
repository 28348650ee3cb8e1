"""Lifecycle actions through kubenova (spec change -> status change) next to the same libvirt
call made directly on the same guest in the same run.

    python bench/bench_lifecycle.py [--runs N]

kubenova: the time from the patch of the Server's spec until a watch sees the status report
the new state. Direct: the libvirt call on the same domain (the agent is stopped meanwhile so it
does not undo it), timed with libvirt-python. Soft reboot is timed to the guest's next boot
marker on both sides (it includes the guest's own ACPI shutdown).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import libvirt
import yaml
from kubernetes import client, watch

from kubenova_api import constants, kube
from kubenova_devenv import guestimage, stack

NS = "default"
NAME = "bench-life"


class Bench:
    def __init__(self, bed: stack.Stack) -> None:
        self.bed = bed
        self.api = client.CustomObjectsApi(kube.api_client(str(bed.cp.kubeconfig())))

    def server(self) -> dict[str, Any]:
        return dict(
            self.api.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, NS, constants.SERVERS, NAME
            )
        )

    def timed_patch(self, spec: dict[str, Any], done: Callable[[dict[str, Any]], bool]) -> float:
        rv = self.server()["metadata"]["resourceVersion"]
        t0 = time.monotonic()
        self.api.patch_namespaced_custom_object(
            constants.GROUP, constants.VERSION, NS, constants.SERVERS, NAME, {"spec": spec}
        )
        w = watch.Watch()
        for event in w.stream(
            self.api.list_namespaced_custom_object,
            constants.GROUP,
            constants.VERSION,
            NS,
            constants.SERVERS,
            field_selector=f"metadata.name={NAME}",
            resource_version=rv,
            timeout_seconds=120,
        ):
            if done(event["object"].get("status") or {}):
                w.stop()
                return time.monotonic() - t0
        raise TimeoutError(f"no status change after {spec}")


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == phase


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    bed = stack.Stack(pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-life-")), host_count=1)
    kn: dict[str, list[float]] = {}
    direct: dict[str, list[float]] = {}
    with bed:
        bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bed.image_manifest()))
        bed.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": constants.API_VERSION,
                    "kind": "Server",
                    "metadata": {"name": NAME, "namespace": NS},
                    "spec": {
                        "flavorRef": "m1.tiny",
                        "imageRef": "kubenova-guest",
                        "shutdownTimeoutSeconds": 30,
                    },
                }
            ),
        )
        bed.kubectl("wait", "--for=condition=Ready", f"server/{NAME}", "--timeout=120s")
        b = Bench(bed)
        srv = b.server()
        uid, host_name = srv["metadata"]["uid"], srv["status"]["nodeName"]
        bed.wait_console(host_name, uid, "kubenova-uptime 2")

        def boots() -> int:
            return bed.console(host_name, uid).count(guestimage.MARKER)

        def wait_boot(n: int) -> None:
            while boots() < n:
                time.sleep(0.02)

        for i in range(args.runs):
            for action, spec, target in (
                ("pause", {"powerState": "Paused"}, "PAUSED"),
                ("unpause", {"powerState": "Running"}, "ACTIVE"),
                ("suspend", {"powerState": "Suspended"}, "SUSPENDED"),
                ("resume", {"powerState": "Running"}, "ACTIVE"),
            ):
                kn.setdefault(action, []).append(b.timed_patch(spec, phase_is(target)))
            for kind in ("Hard", "Soft"):
                asked = f"2026-11-29T12:{i:02d}:{0 if kind == 'Hard' else 30:02d}Z"
                n = boots()
                t0 = time.monotonic()
                b.timed_patch(
                    {"rebootRequestedAt": asked, "rebootType": kind},
                    lambda s, asked=asked: s.get("observedRebootRequestedAt") == asked,
                )
                wait_boot(n + 1)
                kn.setdefault(f"reboot-{kind.lower()}", []).append(time.monotonic() - t0)
                bed.wait_console(host_name, uid, "kubenova-uptime", timeout=60)
                time.sleep(1.5)  # let the guest's acpid start before the next soft reboot

        bed.agents[host_name].stop()  # direct calls next: nobody may undo them
        conn = libvirt.open(bed.hosts[host_name].uri)
        dom = conn.lookupByUUIDString(uid)

        def timed(fn: Callable[[], object]) -> float:
            t0 = time.monotonic()
            fn()
            return time.monotonic() - t0

        for _ in range(args.runs):
            direct.setdefault("pause", []).append(timed(dom.suspend))
            direct.setdefault("unpause", []).append(timed(dom.resume))
            direct.setdefault("suspend", []).append(
                timed(lambda: dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING))
            )
            direct.setdefault("resume", []).append(timed(dom.create))
            n = boots()
            t0 = time.monotonic()
            dom.destroy()
            dom.create()
            wait_boot(n + 1)
            direct.setdefault("reboot-hard", []).append(time.monotonic() - t0)
            bed.wait_console(host_name, uid, "kubenova-uptime", timeout=60)
            time.sleep(1.5)
            n = boots()
            t0 = time.monotonic()
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            while dom.isActive():
                time.sleep(0.02)
            dom.create()
            wait_boot(n + 1)
            direct.setdefault("reboot-soft", []).append(time.monotonic() - t0)
            bed.wait_console(host_name, uid, "kubenova-uptime", timeout=60)
            time.sleep(1.5)
        conn.close()
    print(f"{'action':12} {'kubenova (s)':>13} {'libvirt (s)':>12} {'ratio':>7}   runs={args.runs}")
    rows = {}
    for action in ("pause", "unpause", "suspend", "resume", "reboot-hard", "reboot-soft"):
        k, d = statistics.median(kn[action]), statistics.median(direct[action])
        rows[action] = {"kubenova": round(k, 4), "libvirt": round(d, 4), "ratio": round(k / d, 2)}
        print(f"{action:12} {k:13.3f} {d:12.3f} {k / d:7.2f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
