"""The Helm chart on a real node: what installing kubenova costs and how it runs there.

    python bench/bench_helm.py [--runs N]

Prints, in one run on this machine:

* the image built from the Dockerfile (buildah): its size, and the build time if not cached;
* the real node's start-up (kubelet, containerd, control plane, libvirtd): time and memory
  (the resident sets of its processes, added up), and the image import into containerd;
* ``helm install --wait``: from the command to every controller pod Ready;
* apply -> ACTIVE through the agent's **pod** (the chart's DaemonSet on the node) against the
  same through an agent **process** on the same machine (a libvirtd host of the local test
  bed, the same control plane, the same image server), alternating, and the ratio;
* leader failover: the leader's pod deleted (it hands the Lease back) and the leader's
  process SIGKILLed (the standby waits the Lease out), each until the standby leads and until
  it has bound a new Server;
* the resident memory of the controller and agent processes inside their pods, next to the
  agent process outside.

Every figure is checked first: each Server ACTIVE on the host asked for, with the guest's
boot marker on its console; each failover with a new holder of the Lease that binds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml
from kubernetes import client, watch

from kubenova_api import constants, kube
from kubenova_devenv import (
    containerimage,
    guestimage,
    imageserver,
    libvirthost,
    netutil,
    node,
    nsutil,
    stack,
)

NS = "kubenova-system"
RELEASE = "kn"
PROC_HOST = "proc-host"


def wait_phase(api: client.CustomObjectsApi, name: str, rv: str, phase: str = "ACTIVE") -> float:
    """The moment the Server's status says ``phase`` (from a watch: no polling delay)."""
    w = watch.Watch()
    last: dict[str, Any] = {}
    for event in w.stream(
        api.list_namespaced_custom_object,
        constants.GROUP,
        constants.VERSION,
        "default",
        constants.SERVERS,
        field_selector=f"metadata.name={name}",
        resource_version=rv,
        timeout_seconds=180,
    ):
        last = event["object"].get("status") or {}
        if last.get("phase") == phase:
            w.stop()
            return time.monotonic()
    raise TimeoutError(f"{name} did not reach {phase}; its status: {last}")


# The test guest is served on loopback at a port chosen when it is served: both agents opt in
# to that (by default an agent refuses loopback and ports but 80 and 443).
IMAGE_SOURCE_ARGS = ("--image-permitted-networks=127.0.0.1/32", "--image-allowed-ports=*")


def server(name: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"flavorRef": "m1.tiny", "imageRef": "kubenova-guest", "hostName": host},
    }


def boot(api: client.CustomObjectsApi, name: str, host: str, console: Any) -> tuple[float, float]:
    """Create a Server pinned to ``host``; seconds to ACTIVE and to the guest's boot marker.
    Fails unless it runs there and the guest really booted."""
    t0 = time.monotonic()
    created: dict[str, Any] = api.create_namespaced_custom_object(  # type: ignore[assignment]
        constants.GROUP, constants.VERSION, "default", constants.SERVERS, server(name, host)
    )
    active = wait_phase(api, name, created["metadata"]["resourceVersion"]) - t0
    body: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
        constants.GROUP, constants.VERSION, "default", constants.SERVERS, name
    )
    assert body["status"]["nodeName"] == host, body["status"]
    uid = body["metadata"]["uid"]
    netutil.wait_until(lambda: guestimage.MARKER in console(uid), 120, f"{name} booted")
    return active, time.monotonic() - t0


def delete(n: node.Node, name: str) -> None:
    n.kubectl("delete", "server", name, "-n", "default", "--timeout=120s", timeout=150)


def lease_holder(n: node.Node) -> str:
    out = n.kubectl(
        "get", "lease", f"{RELEASE}-kubenova-controller", "-n", NS, "-o", "json", check=False
    )
    return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "") if out.stdout else ""


def pod_processes(program: str) -> list[int]:
    """PIDs of ``program`` run from the image (its venv is /opt/kubenova: only pods have it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg == f"/opt/kubenova/bin/{program}".encode() for arg in cmdline):
            found.append(int(entry))
    return found


def leader_pid(leader_pod: str) -> int:
    for pid in pod_processes("kubenova-controller"):
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"POD_NAME={leader_pod}".encode() in environ:
            return pid
    raise RuntimeError(f"no controller process of pod {leader_pod}")


def failover(
    n: node.Node, api: client.CustomObjectsApi, name: str, how: str
) -> tuple[float, float]:
    """Take the leader away (``delete``: its pod; ``kill``: SIGKILL its process); seconds
    until another candidate leads and until a Server created then is bound."""
    before = lease_holder(n)
    pod = before.split("_")[0]
    t0 = time.monotonic()
    if how == "delete":
        n.kubectl("delete", "pod", "-n", NS, pod, "--wait=false")
    else:
        os.kill(leader_pid(pod), signal.SIGKILL)
    netutil.wait_until(lambda: lease_holder(n) not in ("", before), 60, "a new leader", 0.05)
    led = time.monotonic() - t0
    api.create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, "default", constants.SERVERS, server(name, node.NAME)
    )

    def bound() -> bool:
        body: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
            constants.GROUP, constants.VERSION, "default", constants.SERVERS, name
        )
        return bool((body.get("status") or {}).get("nodeName"))

    netutil.wait_until(bound, 60, f"{name} bound", 0.05)
    return led, time.monotonic() - t0


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kubenova-bench-helm-"))
    figures: list[tuple[str, str]] = []

    image = containerimage.build()
    built = f"built in {image.built_seconds:.0f}s" if image.built_seconds else "cached"
    figures.append(("image (uncompressed layers)", f"{mib(image.size_bytes)} ({built})"))

    n = node.Node(work / "node", images=(image.archive,))
    proc_host = libvirthost.LibvirtHost(PROC_HOST, work / PROC_HOST)
    agent: stack.Proc | None = None
    root_server: imageserver.ImageServer | None = None
    try:
        n.start()
        figures.append(("node bed start-up (image import included)", f"{n.started_seconds:.1f}s"))
        figures.append(("node bed memory (RSS of its processes)", mib(n.rss_bytes())))

        t0 = time.monotonic()
        repository, tag = image.ref.rsplit(":", 1)
        n.helm(
            "install", RELEASE, str(stack.DEPLOY / "helm" / "kubenova"), "-n", NS,
            "--create-namespace", "--wait", "--timeout", "240s",
            "--set", f"image.repository={repository},image.tag={tag},image.pullPolicy=Never",
            "--set", "agent.virtType=qemu",
            "--set", f"agent.extraArgs={{{','.join(IMAGE_SOURCE_ARGS)}}}",
        )  # fmt: skip
        figures.append(("helm install --wait", f"{time.monotonic() - t0:.1f}s"))
        ready = n.kubectl("get", "pods", "-n", NS, "-o", "json").stdout
        assert len(json.loads(ready)["items"]) == 2, "two controller pods"

        # One image server for both agents: the same port on the node's loopback and here.
        served = n.workdir / "images"
        served.mkdir(exist_ok=True)
        root_server = imageserver.ImageServer(served)
        root_server.start()
        manifest, _ = n.guest_image(port=root_server.port)
        n.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
        n.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
        n.kubectl("label", "node", node.NAME, "kubenova.io/hypervisor=true")
        proc_host.start()
        agent = stack.Proc(
            "agent-process",
            [
                *proc_host.nsenter(), sys.executable, "-m", "kubenova_agent.main",
                "--host-name", PROC_HOST, "--libvirt-uri", "qemu:///system",
                "--virt-type", "qemu", "--kubeconfig", str(n.kubeconfig), *IMAGE_SOURCE_ARGS,
            ],
            work / "agent-process.log",
            {**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        agent.start()
        api = client.CustomObjectsApi(kube.api_client(str(n.kubeconfig)))

        def up(host: str) -> bool:
            hv = n.kubectl("get", "hv", host, "-o", "json", check=False).stdout
            conds = json.loads(hv)["status"].get("conditions", []) if hv else []
            return any(c["type"] == "Up" and c["status"] == "True" for c in conds)

        netutil.wait_until(lambda: up(node.NAME) and up(PROC_HOST), 120, "both hosts up")
        time.sleep(3)  # the agents' first heartbeats (libvirt probing QEMU) are not timed

        def pod_console(uid: str) -> str:
            return n.console(uid)

        def proc_console(uid: str) -> str:
            path = proc_host.outside(f"/var/lib/kubenova/consoles/{uid}.log")
            return path.read_text(errors="replace") if path.exists() else ""

        rows: dict[str, list[tuple[float, float]]] = {"pod": [], "process": []}
        for i in range(args.runs + 1):  # the first of each fetches the image: not counted
            for kind, host, console in (
                ("pod", node.NAME, pod_console),
                ("process", PROC_HOST, proc_console),
            ):
                name = f"bench-{kind}-{i}"
                result = boot(api, name, host, console)
                if i:
                    rows[kind].append(result)
                delete(n, name)
        pod_active = statistics.median(r[0] for r in rows["pod"])
        proc_active = statistics.median(r[0] for r in rows["process"])
        pod_boot = statistics.median(r[1] for r in rows["pod"])
        proc_boot = statistics.median(r[1] for r in rows["process"])
        figures.append(
            (
                f"apply -> ACTIVE, agent pod / agent process (median of {args.runs})",
                f"{pod_active:.2f}s / {proc_active:.2f}s = {pod_active / proc_active:.2f}",
            )
        )
        figures.append(
            (
                "apply -> guest's boot marker, pod / process",
                f"{pod_boot:.2f}s / {proc_boot:.2f}s = {pod_boot / proc_boot:.2f}",
            )
        )

        ctl = pod_processes("kubenova-controller")
        agents = pod_processes("kubenova-agent")
        assert len(ctl) == 2 and len(agents) == 1, (ctl, agents)
        assert agent.popen is not None
        figures.append(
            (
                "RSS: the two controller pods / agent pod / agent process",
                " ".join(mib(nsutil.rss_bytes(p)) for p in ctl)
                + f" / {mib(nsutil.rss_bytes(agents[0]))}"
                + f" / {mib(nsutil.rss_bytes(agent.popen.pid))}",
            )
        )

        for how in ("delete", "kill"):
            led, bound = failover(n, api, f"bench-failover-{how}", how)
            what = "leader pod deleted" if how == "delete" else "leader process SIGKILLed"
            figures.append(
                (f"failover, {what}", f"new leader {led:.1f}s, next Server bound {bound:.1f}s")
            )
            delete(n, f"bench-failover-{how}")
            netutil.wait_until(
                lambda: len(pod_processes("kubenova-controller")) == 2, 120, "two controllers"
            )
        figures.append(("node bed memory at the end", mib(n.rss_bytes())))
    finally:
        if agent is not None:
            agent.stop()
        proc_host.stop()
        if root_server is not None:
            root_server.stop()
        n.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    width = max(len(k) for k, _ in figures)
    for key, value in figures:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
