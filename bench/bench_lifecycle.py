"""Lifecycle actions through kubenova (spec change -> status change) next to the same libvirt
call made directly on the same guest in the same run.

    python bench/bench_lifecycle.py [--runs N]

kubenova: the time from the patch of the Server's spec until a watch sees the status report
the new state. Direct: the libvirt call on the same domain (the agent is stopped meanwhile so it
does not undo it), timed with libvirt-python. Soft reboot is timed to the guest's next boot
marker on both sides (it includes the guest's own ACPI shutdown).

Every action counts only once it is checked, by fresh reads: the Server's status shows the new
state (or the reboot request acted on) and libvirt shows it too (paused, running, shut off with
a managed-save image; one more boot on the console for a reboot, not two). Otherwise it exits 1
saying which action of which run did not happen, and prints no table.
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
from kubernetes import client

import benchkit
from kubenova_devenv import guestimage, stack

NS = "default"
NAME = "bench-life"
#: What libvirt must show after each kubenova phase (virsh domstate; managed save or not).
LIBVIRT_STATE = {
    "PAUSED": ("paused", False),
    "ACTIVE": ("running", False),
    "SUSPENDED": ("shut off", True),
}


class Bench:
    def __init__(
        self,
        bed: stack.Stack,
        api: client.ApiClient,
        watcher: benchkit.Watcher,
        tracker: benchkit.Tracker,
    ) -> None:
        self.bed = bed
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.watcher = watcher
        self.tracker = tracker
        srv = self.server()
        self.uid: str = srv["metadata"]["uid"]
        self.host_name: str = benchkit.status(srv)["nodeName"]
        self.host = bed.hosts[self.host_name]

    def server(self) -> dict[str, Any]:
        srv = benchkit.get(self.api, "servers", NS, NAME)
        if srv is None:
            raise benchkit.BenchFailure(f"Server {NAME} is gone", [])
        return srv

    def timed_patch(
        self, what: str, spec: dict[str, Any], field: str, value: Any
    ) -> tuple[float, float]:
        """Patch the spec; when it was sent and the seconds until the watch saw status
        ``field`` become ``value``. Fails if the status already says so (nothing would be
        timed) or never does."""
        before = self.tracker.fields[field](self.server())
        if before == value:
            raise benchkit.BenchFailure(f"{what}: the status already shows {field}={value}", [])
        t0 = time.monotonic()
        self.custom.patch_namespaced_custom_object(
            benchkit.GROUP, benchkit.VERSION, NS, "servers", NAME, {"spec": spec}
        )

        def seen() -> bool:
            return self.tracker.tracks[NAME].first(field, value, after=t0) is not None

        if not self.watcher.wait_for(seen, 120, give_up=lambda: benchkit.exited(self.bed)):
            raise benchkit.BenchFailure(
                f"{what}: the status never showed {field}={value} after {spec}",
                [benchkit.describe_server(self.server())],
            )
        change = self.tracker.tracks[NAME].first(field, value, after=t0)
        assert change is not None
        self.verify_status(what, field, value)
        return t0, change.at - t0

    def verify_status(self, what: str, field: str, value: Any) -> None:
        """A fresh GET shows ``field`` = ``value``; for a phase, libvirt agrees."""
        srv = self.server()
        problems = []
        if self.tracker.fields[field](srv) != value:
            problems.append(f"a fresh GET shows {benchkit.describe_server(srv)}")
        if field == "phase":
            problems += self.verify_libvirt(value)
        benchkit.fail_if(problems, f"{what}: timed, but the Server is not {field}={value}")

    def verify_libvirt(self, phase: str) -> list[str]:
        state, saved = LIBVIRT_STATE[phase]
        actual = benchkit.domain_state(self.host, self.uid)
        has_save = actual != "absent" and benchkit.managed_save(self.host, self.uid)
        if (actual, has_save) != (state, saved):
            return [
                f"libvirt on {self.host_name}: domain {actual}"
                f"{' with' if has_save else ' without'} a managed save, not {state}"
            ]
        return []

    # -- the guest's console
    def boots(self) -> int:
        return self.bed.console(self.host_name, self.uid).count(guestimage.MARKER)

    def wait_boot(self, n: int, what: str) -> float:
        """When the console shows boot number ``n``."""
        return benchkit.wait_text(
            lambda: "x" if self.boots() >= n else "", "x", 120, f"{what}: boot number {n}"
        )

    def settle(self, n: int, what: str) -> None:
        """After boot ``n``: the guest is up (its uptime line after the last marker) and its
        acpid started before the next soft reboot; and it booted once, not twice."""
        benchkit.wait_text(
            lambda: self.bed.console(self.host_name, self.uid).rsplit(guestimage.MARKER, 1)[-1],
            "kubenova-uptime",
            60,
            f"{what}: the guest up after boot {n}",
        )
        time.sleep(1.5)
        if self.boots() != n:
            raise benchkit.BenchFailure(f"{what}: {self.boots()} boots, expected {n}", [])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-life-"))
    print(f"logs: {work}", file=sys.stderr, flush=True)
    bed = stack.Stack(work, host_count=1)
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
                    "apiVersion": benchkit.API_VERSION,
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
        api = benchkit.api_client(bed)
        tracker = benchkit.Tracker(
            {
                "phase": lambda o: benchkit.status(o).get("phase"),
                "observedRebootRequestedAt": lambda o: benchkit.status(o).get(
                    "observedRebootRequestedAt"
                ),
            }
        )
        servers = benchkit.lister(api, "servers", NS)
        with benchkit.watch(
            f"Server {NAME}", servers, tracker, field_selector=f"metadata.name={NAME}"
        ) as watcher:
            b = Bench(bed, api, watcher, tracker)
            bed.wait_console(b.host_name, b.uid, "kubenova-uptime 2")
            for i in range(args.runs):
                for action, spec, target in (
                    ("pause", {"powerState": "Paused"}, "PAUSED"),
                    ("unpause", {"powerState": "Running"}, "ACTIVE"),
                    ("suspend", {"powerState": "Suspended"}, "SUSPENDED"),
                    ("resume", {"powerState": "Running"}, "ACTIVE"),
                ):
                    what = f"run {i}: kubenova {action}"
                    _, seconds = b.timed_patch(what, spec, "phase", target)
                    kn.setdefault(action, []).append(seconds)
                for kind in ("Hard", "Soft"):
                    what = f"run {i}: kubenova reboot ({kind})"
                    asked = f"2026-11-29T12:{i:02d}:{0 if kind == 'Hard' else 30:02d}Z"
                    n = b.boots()
                    t0, _ = b.timed_patch(
                        what,
                        {"rebootRequestedAt": asked, "rebootType": kind},
                        "observedRebootRequestedAt",
                        asked,
                    )
                    booted = b.wait_boot(n + 1, what)
                    kn.setdefault(f"reboot-{kind.lower()}", []).append(booted - t0)
                    b.verify_status(what, "phase", "ACTIVE")
                    b.settle(n + 1, what)

        bed.agents[b.host_name].stop()  # direct calls next: nobody may undo them
        conn = libvirt.open(b.host.uri)
        dom = conn.lookupByUUIDString(b.uid)

        def timed(what: str, fn: Callable[[], object], phase: str) -> float:
            t0 = time.monotonic()
            fn()
            seconds = time.monotonic() - t0
            benchkit.fail_if(b.verify_libvirt(phase), f"{what}: timed, but libvirt disagrees")
            return seconds

        for i in range(args.runs):
            direct.setdefault("pause", []).append(timed(f"run {i}: pause", dom.suspend, "PAUSED"))
            direct.setdefault("unpause", []).append(
                timed(f"run {i}: unpause", dom.resume, "ACTIVE")
            )
            direct.setdefault("suspend", []).append(
                timed(
                    f"run {i}: suspend",
                    lambda: dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING),
                    "SUSPENDED",
                )
            )
            direct.setdefault("resume", []).append(timed(f"run {i}: resume", dom.create, "ACTIVE"))
            what = f"run {i}: libvirt reboot (hard)"
            n = b.boots()
            t0 = time.monotonic()
            dom.destroy()
            dom.create()
            direct.setdefault("reboot-hard", []).append(b.wait_boot(n + 1, what) - t0)
            benchkit.fail_if(b.verify_libvirt("ACTIVE"), what)
            b.settle(n + 1, what)
            what = f"run {i}: libvirt reboot (soft)"
            n = b.boots()
            t0 = time.monotonic()
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            benchkit.wait_text(
                lambda: "off" if not dom.isActive() else "", "off", 60, f"{what}: shutdown"
            )
            dom.create()
            direct.setdefault("reboot-soft", []).append(b.wait_boot(n + 1, what) - t0)
            benchkit.fail_if(b.verify_libvirt("ACTIVE"), what)
            b.settle(n + 1, what)
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
    sys.exit(benchkit.run_main(main))
