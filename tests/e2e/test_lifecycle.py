"""Nova's instance actions, declared on the Server and checked on the guest itself (its
serial console: boots and its own uptime) and on libvirt (domain state, managed save)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import yaml

from kubenova_devenv import guestimage, stack
from tests.conftest import condition, eventually
from tests.e2e import helpers

pytestmark = pytest.mark.timeout(600)

KUBENOVA = str(pathlib.Path(sys.executable).parent / "kubenova")


class Guest:
    """One Server under test: its status, its domain, its console."""

    def __init__(self, bed: stack.Stack, namespace: str, name: str) -> None:
        self.bed, self.namespace, self.name = bed, namespace, name
        srv = bed.get("server", name, namespace)
        assert srv is not None
        self.uid = srv["metadata"]["uid"]
        self.host_name = srv["status"]["nodeName"]
        self.host = bed.hosts[self.host_name]

    def server(self) -> dict[str, Any]:
        srv = self.bed.get("server", self.name, self.namespace)
        assert srv is not None
        return srv

    def wait_phase(self, phase: str, timeout: float = 90) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            srv = self.server()
            return srv if srv.get("status", {}).get("phase") == phase else None

        return eventually(reached, timeout, what=f"{self.name} {phase}")  # type: ignore[no-any-return]

    def console(self) -> str:
        return self.bed.console(self.host_name, self.uid)

    def domstate(self) -> str:
        return self.host.virsh("domstate", self.uid).strip()

    def managed_save(self) -> bool:
        return "Managed save:   yes" in self.host.virsh("dominfo", self.uid)

    def wait_uptime_above(self, seconds: float, timeout: float = 60) -> float:
        return eventually(
            lambda: (u := helpers.last_uptime(self.console())) > seconds and u,
            timeout,
            what=f"guest uptime above {seconds}",
        )  # type: ignore[no-any-return]


def _boot(bed: stack.Stack, namespace: str, name: str, **spec: Any) -> Guest:
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server(name, namespace, **spec))
    helpers.wait_ready(bed, namespace, name)
    guest = Guest(bed, namespace, name)
    bed.wait_console(guest.host_name, guest.uid, "kubenova-uptime")
    return guest


def _this_boot(console: str) -> str:
    """What the guest printed since it last booted."""
    return console[console.rindex(guestimage.MARKER) :] if guestimage.MARKER in console else ""


def _cmdline(pid: int) -> bytes:
    return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()


def _restart_agent(bed: stack.Stack, host_name: str) -> None:
    bed.agents[host_name].kill()
    bed.start_agent(host_name)
    time.sleep(6)  # the agent lists its Servers and reconciles each once, then settles


def test_power_reboot_and_rescue_cycle(bed: stack.Stack, namespace: str) -> None:
    g = _boot(bed, namespace, "cycle", shutdownTimeoutSeconds=20)
    assert helpers.boots(g.console()) == 1

    # Stop (ACPI, the guest powers off by itself) and start: a fresh boot.
    helpers.patch(bed, namespace, "cycle", {"powerState": "Stopped"})
    g.wait_phase("SHUTOFF")
    assert g.domstate() == "shut off"
    assert "reboot: Power down" in g.console()  # the guest shut itself down on ACPI
    helpers.patch(bed, namespace, "cycle", {"powerState": "Running"})
    g.wait_phase("ACTIVE")
    eventually(lambda: helpers.boots(g.console()) == 2, 60, what="a second boot")

    # Suspend (managed save) and resume: the uptime goes on, no new boot.
    before = g.wait_uptime_above(2)
    helpers.patch(bed, namespace, "cycle", {"powerState": "Suspended"})
    srv = g.wait_phase("SUSPENDED")
    assert srv["status"]["powerState"] == "Suspended"
    assert g.domstate() == "shut off" and g.managed_save()
    _restart_agent(bed, g.host_name)  # a restarted agent changes nothing
    assert g.server()["status"]["phase"] == "SUSPENDED" and g.managed_save()
    helpers.patch(bed, namespace, "cycle", {"powerState": "Running"})
    g.wait_phase("ACTIVE")
    after = g.wait_uptime_above(before)
    assert helpers.boots(g.console()) == 2 and after > before
    assert not g.managed_save()

    # Pause and unpause: vCPUs stop (the console stops growing), memory is kept.
    helpers.patch(bed, namespace, "cycle", {"powerState": "Paused"})
    g.wait_phase("PAUSED")
    assert g.domstate() == "paused"
    frozen = g.console()
    _restart_agent(bed, g.host_name)
    assert g.console() == frozen and g.domstate() == "paused"
    assert g.server()["status"]["phase"] == "PAUSED"
    helpers.patch(bed, namespace, "cycle", {"powerState": "Running"})
    g.wait_phase("ACTIVE")
    g.wait_uptime_above(helpers.last_uptime(frozen))
    assert helpers.boots(g.console()) == 2

    # Soft reboot, then hard: each request runs exactly once and the guest boots anew.
    for n, kind in enumerate(("Soft", "Hard"), start=3):
        asked = f"2026-11-29T10:0{n}:00Z"
        helpers.patch(bed, namespace, "cycle", {"rebootRequestedAt": asked, "rebootType": kind})
        eventually(
            lambda asked=asked: g.server()["status"].get("observedRebootRequestedAt") == asked,
            90,
            what=f"{kind} reboot acted on",
        )
        eventually(lambda n=n: helpers.boots(g.console()) == n, 60, what=f"boot {n}")
        g.wait_phase("ACTIVE")
    time.sleep(3)
    assert helpers.boots(g.console()) == 4  # no second reboot for the same request

    # Rescue with another image: it boots from its own disk, the server's disk is /dev/vdb.
    disk, sha = bed.disk_variant(f"rescue-{namespace[-6:]}")
    rescue_image = bed.image_manifest(f"rescue-{namespace}")
    rescue_image["spec"]["source"]["uec"]["disk"] = {
        "url": bed.image_server.url(disk),
        "sha256": sha,
        "format": "qcow2",
    }  # type: ignore[union-attr]
    helpers.apply(bed, yaml.safe_dump(rescue_image))
    helpers.patch(bed, namespace, "cycle", {"rescue": {"imageRef": f"rescue-{namespace}"}})
    g.wait_phase("RESCUE")
    eventually(lambda: helpers.boots(g.console()) == 5, 60, what="the rescue boot")
    tail = eventually(
        lambda: "kubenova-uptime" in (t := _this_boot(g.console())) and t,
        60,
        what="the rescue guest up",
    )
    assert f"disk /dev/vda: KUBENOVA-DISK-rescue-{namespace[-6:]}" in tail
    assert f"disk /dev/vdb: {guestimage.DISK_MARKER}" in tail  # the server's own disk
    rescued_at = g.wait_uptime_above(1)
    _restart_agent(bed, g.host_name)
    assert g.server()["status"]["phase"] == "RESCUE"
    assert helpers.boots(g.console()) == 5 and g.wait_uptime_above(rescued_at) > rescued_at

    # Unrescue: the original guest boots from its own disk again; the rescue disk is gone.
    bed.kubectl(
        "patch",
        "server",
        "cycle",
        "-n",
        namespace,
        "--type",
        "json",
        "-p",
        '[{"op": "remove", "path": "/spec/rescue"}]',
    )
    g.wait_phase("ACTIVE")
    eventually(lambda: helpers.boots(g.console()) == 6, 60, what="the unrescued boot")
    tail = eventually(
        lambda: "kubenova-uptime" in (t := _this_boot(g.console())) and t,
        60,
        what="the unrescued guest up",
    )
    assert f"disk /dev/vda: {guestimage.DISK_MARKER}" in tail
    assert "rescue" not in " ".join(v for _, v in helpers.volumes_for(bed, g.uid))

    # An action the current state does not allow is refused, with a reason, and not tried.
    helpers.patch(bed, namespace, "cycle", {"powerState": "Stopped"})
    g.wait_phase("SHUTOFF")
    helpers.patch(bed, namespace, "cycle", {"powerState": "Paused"})
    refused = eventually(
        lambda: (
            condition(g.server(), "Converged").get("reason") == "ActionNotAllowed"
            and condition(g.server(), "Converged")
        ),
        30,
        what="Converged=False",
    )
    assert refused["message"] == "cannot pause a server that is SHUTOFF"
    assert g.domstate() == "shut off" and g.server()["status"]["phase"] == "SHUTOFF"


def test_config_drive_files_and_a_guest_that_powers_itself_off(
    bed: stack.Stack, namespace: str
) -> None:
    # The user data powers the guest off on its first boot only (it leaves a mark on its own
    # disk); restart policy Always brings it back.
    user_data = (
        "#!/bin/sh\n"
        "if dd if=/dev/vda bs=512 skip=4096 count=1 2>/dev/null | grep -q KUBENOVA-BOOTED; then\n"
        "  echo kubenova-userdata: second boot, staying up\n"
        "else\n"
        "  echo KUBENOVA-BOOTED | dd of=/dev/vda bs=512 seek=4096 conv=notrunc 2>/dev/null\n"
        "  sync; sleep 2; echo kubenova-userdata: powering off; poweroff -f\n"
        "fi\n"
    )
    watcher = subprocess.Popen(
        [
            str(stack.kubectl_binary()),
            "--kubeconfig",
            str(bed.cp.kubeconfig()),
            "get",
            "servers",
            "-n",
            namespace,
            "--watch",
            "-o",
            "jsonpath={.status.phase}{'\\n'}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    phases: list[str] = []
    reader = threading.Thread(
        target=lambda: phases.extend(
            line.strip()
            for line in watcher.stdout  # type: ignore[union-attr]
        ),
        daemon=True,
    )
    try:
        reader.start()
        g = _boot(
            bed,
            namespace,
            "selfstop",
            restartPolicy="Always",
            userData=user_data,
            files=[{"path": "/etc/motd", "content": "hello from kubenova"}],
        )
        bed.wait_console(g.host_name, g.uid, "kubenova-file /etc/motd: hello from kubenova")
        eventually(
            lambda: g.server()["status"].get("restartCount") == 1,
            60,
            what="the guest restarted once",
        )
        bed.wait_console(g.host_name, g.uid, "second boot, staying up")
        g.wait_phase("ACTIVE")
    finally:
        time.sleep(1)
        watcher.terminate()
        watcher.wait(timeout=10)
        watcher.stdout.close()  # type: ignore[union-attr]
    phases = [p for p in phases if p]
    assert "SHUTOFF" in phases and phases.index("SHUTOFF") < len(phases) - 1, phases
    assert phases[-1] == "ACTIVE"
    events = bed.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=selfstop",
        "-o",
        "jsonpath={range .items[*]}{.reason}{' '}{end}",
    ).stdout.split()
    assert "GuestShutdown" in events and "Restarted" in events
    console = g.console()
    assert helpers.boots(console) == 2
    assert f'config drive /dev/vdb: {{"uuid": "{g.uid}", "name": "selfstop"' in console


def test_console_command_prints_the_tail_wherever_the_guest_runs(
    bed: stack.Stack, namespace: str
) -> None:
    g = _boot(bed, namespace, "talker")
    out = subprocess.run(
        [
            KUBENOVA,
            "console",
            "talker",
            "-n",
            namespace,
            "--lines",
            "5",
            "--kubeconfig",
            str(bed.cp.kubeconfig()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("kubenova-uptime ")
    missing = subprocess.run(
        [
            KUBENOVA,
            "console",
            "nobody",
            "-n",
            namespace,
            "--kubeconfig",
            str(bed.cp.kubeconfig()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "Not Found" in missing.stderr
    assert g.uid


def test_a_stopped_server_stays_shut_off_across_a_libvirtd_restart(
    bed: stack.Stack, namespace: str
) -> None:
    """libvirt keeps a shut-off domain's reason only while libvirtd runs: after a restart (a
    host's reboot too) a stopped guest reads "shut off (unknown)", as a domain never started
    does. The Server still says SHUTOFF, and its next start is recorded like any other. A
    Server created stopped is built and SHUTOFF as well, not a BUILD that never ends. A
    running guest that died while libvirtd was down is started again."""
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server("dormant", namespace, powerState="Stopped"))
    helpers.wait_ready(bed, namespace, "dormant")
    g = Guest(bed, namespace, "dormant")
    srv = g.server()
    assert srv["status"]["phase"] == "SHUTOFF", srv["status"]
    assert "as declared (stopped)" in condition(srv, "Ready")["message"]
    assert g.host.virsh("domstate", "--reason", g.uid).strip() == "shut off (unknown)"
    assert helpers.boots(g.console()) == 0

    def started() -> int:
        return [r for r, _ in helpers.events(bed, namespace, "Server", "dormant")].count("Started")

    helpers.patch(bed, namespace, "dormant", {"powerState": "Running"})
    g.wait_phase("ACTIVE")
    eventually(lambda: started() == 1, 30, what="the first start recorded")
    bed.wait_console(g.host_name, g.uid, "kubenova-uptime")
    helpers.patch(bed, namespace, "dormant", {"powerState": "Stopped"})
    g.wait_phase("SHUTOFF")
    assert g.host.virsh("domstate", "--reason", g.uid).strip() == "shut off (shutdown)"

    g.host.stop(destroy_domains=False)  # the other guests of this host run on
    g.host.start()
    assert g.host.virsh("domstate", "--reason", g.uid).strip() == "shut off (unknown)"
    _restart_agent(bed, g.host_name)  # it reconciles every Server of its host once
    srv = g.server()
    assert srv["status"]["phase"] == "SHUTOFF", srv["status"]
    assert condition(srv, "Ready")["status"] == "True"

    helpers.patch(bed, namespace, "dormant", {"powerState": "Running"})
    g.wait_phase("ACTIVE")
    eventually(lambda: started() == 2, 30, what="the start after the restart recorded")
    eventually(lambda: helpers.boots(g.console()) == 2, 60, what="a second boot")
    g.wait_uptime_above(1)

    # A guest that dies while libvirtd is down (the OOM killer, say) sends the agent no
    # lifecycle event. It looks at its Servers again when its connection is back (its
    # heartbeat reconnects within 2 s here; tests/unit/test_libvirt_reconnect.py), and
    # starts the guest again.
    qemu = [pid for pid in g.host.guest_pids() if g.uid.encode() in _cmdline(pid)]
    assert len(qemu) == 1, qemu
    g.host.stop(destroy_domains=False)
    os.kill(qemu[0], signal.SIGKILL)
    g.host.start()
    eventually(lambda: helpers.boots(g.console()) == 3, 30, what="started again after libvirtd")
    g.wait_phase("ACTIVE")


def test_restart_policy_never_leaves_a_self_stopped_guest_off(
    bed: stack.Stack, namespace: str
) -> None:
    user_data = "#!/bin/sh\nsleep 1\necho kubenova-userdata: powering off\npoweroff -f\n"
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(
        bed, helpers.server("quitter", namespace, restartPolicy="Never", userData=user_data)
    )
    srv = eventually(
        lambda: (
            (s := bed.get("server", "quitter", namespace))
            and condition(s, "Ready").get("reason") == "GuestShutdown"
            and s
        ),
        90,
        what="Ready=False/GuestShutdown",
    )
    assert srv["status"]["phase"] == "SHUTOFF"
    g = Guest(bed, namespace, "quitter")
    time.sleep(5)  # nothing restarts it: the policy says never
    srv = g.server()
    assert srv["status"]["phase"] == "SHUTOFF" and srv["status"].get("restartCount", 0) == 0
    assert g.domstate() == "shut off" and helpers.boots(g.console()) == 1
    # A change of the spec is a person's decision: it runs the declared state again.
    helpers.patch(bed, namespace, "quitter", {"userData": None, "restartPolicy": "OnFailure"})
    eventually(lambda: helpers.boots(g.console()) == 2, 60, what="started again after the edit")


def test_a_guest_that_powers_itself_off_in_a_loop_backs_off(
    bed: stack.Stack, namespace: str
) -> None:
    """Issue 13: restartPolicy Always restarted such a guest at once, every time. Like a
    container in CrashLoopBackOff: the first restart at once, the next after 10 s, said in
    status (Ready=False/RestartBackOff)."""
    user_data = "#!/bin/sh\nsleep 1\necho kubenova-userdata: powering off\npoweroff -f\n"
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server("looper", namespace, userData=user_data))

    def restarts() -> int:
        srv = bed.get("server", "looper", namespace) or {}
        return int((srv.get("status") or {}).get("restartCount", 0))

    eventually(lambda: restarts() >= 1, 120, what="the first restart (at once)")
    g = Guest(bed, namespace, "looper")

    def backing_off() -> dict | None:
        srv = g.server()
        return srv if condition(srv, "Ready").get("reason") == "RestartBackOff" else None

    srv = eventually(backing_off, 90, step=0.2, what="Ready=False/RestartBackOff")
    seen = time.monotonic()
    assert srv["status"]["phase"] == "SHUTOFF" and restarts() == 1
    assert "back-off 10s" in condition(srv, "Ready")["message"]
    eventually(lambda: restarts() >= 2, 30, step=0.2, what="the second restart")
    waited = time.monotonic() - seen
    assert waited > 6, f"restarted {waited:.1f}s after the back-off was reported: not backed off"
    events = bed.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=looper",
        "-o", "jsonpath={range .items[*]}{.reason}{' '}{end}",
    ).stdout.split()  # fmt: skip
    assert "RestartBackOff" in events
    bed.kubectl("delete", "server", "looper", "-n", namespace, "--timeout=60s", timeout=90)
