"""The Helm chart on a real node, as an operator installs it: the image built from the
Dockerfile, ``helm install --wait``, the node labelled as a hypervisor, the examples applied
and the guest booted through the agent's pod; ``helm upgrade`` rolls the agent while the guest
keeps running; the leader controller's pod deleted and the standby binding the next Server;
``helm uninstall`` leaving no workload behind (the CRDs stay).

The tests run in this order and build on each other (one installation, as on a cluster)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_api import constants
from kubenova_devenv import guestimage, node, stack
from tests.conftest import condition, eventually
from tests.e2e import helpers
from tests.e2e.conftest import ChartBed

pytestmark = [pytest.mark.node, pytest.mark.timeout(600)]

NS = "kubenova-system"
RELEASE = "kn"
CHART = str(stack.DEPLOY / "helm" / "kubenova")
HYPERVISOR_LABEL = "kubenova.io/hypervisor"
# The test guest is served on the node's loopback at a port chosen when it is served: the
# agent opts in to that explicitly (by default it refuses loopback and ports but 80 and 443).
IMAGE_SOURCE_ARGS = ("--image-permitted-networks=127.0.0.1/32", "--image-allowed-ports=*")


def _values(bed: ChartBed) -> list[str]:
    repository, tag = bed.image.ref.rsplit(":", 1)
    return [
        "--set",
        f"image.repository={repository},image.tag={tag},image.pullPolicy=Never",
        "--set",
        "agent.virtType=qemu",  # no nested KVM here
        "--set",
        f"agent.extraArgs={{{','.join(IMAGE_SOURCE_ARGS)}}}",
    ]


def _pods(n: node.Node, component: str) -> list[dict[str, Any]]:
    out = n.kubectl(
        "get", "pods", "-n", NS, "-l", f"app.kubernetes.io/component={component}", "-o", "json"
    ).stdout
    return list(json.loads(out)["items"])


def _running_ready(pods: list[dict[str, Any]]) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in pods
        if p["status"].get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
        and condition(p, "Ready").get("status") == "True"
    ]


def _get(n: node.Node, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    out = n.kubectl(*args, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _lease_holder(n: node.Node) -> str:
    lease = _get(n, "lease", f"{RELEASE}-kubenova-controller", NS)
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _diagnosis(n: node.Node) -> str:
    """What a person needs to see when a Server does not get Ready on the node: the Server,
    the Events, and the last lines of every kubenova pod's log."""
    parts = []
    for args in (
        ("get", "server", "-A", "-o", "yaml"),
        ("get", "hypervisor", "-o", "yaml"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ("get", "pods", "-A", "-o", "wide"),
    ):
        out = n.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{out.stdout[-6000:]}{out.stderr[-2000:]}")
    for component in ("controller", "agent"):
        for pod in _pods(n, component):
            name = pod["metadata"]["name"]
            out = n.kubectl("logs", "-n", NS, name, "--tail=60", check=False)
            parts.append(f"$ kubectl logs {name}\n{out.stdout}{out.stderr}")
    return "\n".join(parts)


def _upgrade(n: node.Node, *values: str) -> None:
    """``helm upgrade --reuse-values --wait`` of the release with ``values`` changed."""
    n.helm(
        "upgrade", RELEASE, CHART, "-n", NS, "--reuse-values", "--wait", "--timeout", "240s",
        *values,
    )  # fmt: skip


def _eventually_or_diagnose(
    n: node.Node, check: Any, timeout: float, what: str, console_of: str = ""
) -> Any:
    """:func:`eventually`, and on a timeout the node's state (and a guest's console) with it."""
    try:
        return eventually(check, timeout, what=what)
    except pytest.fail.Exception as exc:
        console = n.console(console_of)[-3000:] if console_of else ""
        pytest.fail(f"{exc}\n{console}\n{_diagnosis(n)}")


def _server(name: str, **spec: Any) -> str:
    return helpers.server(name, "default", **spec)


@pytest.fixture(scope="module")
def installed(node_bed: ChartBed) -> Iterator[ChartBed]:
    """The release, installed by the first test; uninstalled by the last one (or here)."""
    yield node_bed
    n = node_bed.node
    if RELEASE in n.helm("list", "-n", NS, "-q").stdout.split():
        n.kubectl("delete", "servers", "--all", "-A", "--timeout=120s", check=False, timeout=150)
        n.helm("uninstall", RELEASE, "-n", NS, "--wait")


def test_helm_install_runs_the_controllers_and_an_agent_on_each_labelled_node(
    installed: ChartBed,
) -> None:
    n = installed.node
    started = time.monotonic()
    n.helm(
        "install",
        RELEASE,
        CHART,
        "-n",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "240s",
        *_values(installed),
    )
    print(f"helm install --wait: {time.monotonic() - started:.1f}s")
    # --wait waits for replicas - maxUnavailable (1) of the Deployment's pods; the other
    # follows (a standby is ready too).
    eventually(
        lambda: len(_running_ready(_pods(n, "controller"))) == 2,
        60,
        what="both controller pods Running and Ready",
    )
    # No hypervisor yet: the DaemonSet places no agent.
    ds = _get(n, "daemonset", f"{RELEASE}-kubenova-agent", NS)
    assert ds["status"]["desiredNumberScheduled"] == 0
    assert _pods(n, "agent") == []
    # One controller leads; the other stands by.
    holder = eventually(lambda: _lease_holder(n), 60, what="a controller holds the Lease")
    assert holder.split("_")[0] in _running_ready(_pods(n, "controller"))

    n.kubectl("label", "node", node.NAME, f"{HYPERVISOR_LABEL}=true")
    agents = eventually(
        lambda: _running_ready(_pods(n, "agent")), 120, what="the agent pod Running and Ready"
    )
    assert len(agents) == 1
    pod = _get(n, "pod", agents[0], NS)
    assert pod["spec"]["nodeName"] == node.NAME
    assert pod["spec"]["hostNetwork"] is True
    # The Hypervisor is named after the node (downward API), never after the pod.
    eventually(
        lambda: condition(_get(n, "hypervisor", node.NAME), "Up").get("status") == "True",
        90,
        what=f"Hypervisor {node.NAME} registered and up",
    )
    assert _get(n, "hypervisor", agents[0]) == {}
    # This API server serves MutatingAdmissionPolicy: the chart gave it the one that makes
    # every Server with the agents' finalizer (named after the release, bound).
    policy = f"{RELEASE}-kubenova-domain-finalizer"
    assert _get(n, "mutatingadmissionpolicy", policy)["spec"]["failurePolicy"] == "Ignore"
    assert _get(n, "mutatingadmissionpolicybinding", policy)["spec"]["policyName"] == policy


def test_the_example_server_boots_through_the_agent_pod(installed: ChartBed) -> None:
    n = installed.node
    image, _ = n.guest_image()
    n.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(image))
    started = time.monotonic()
    n.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    n.kubectl("apply", "-f", str(stack.EXAMPLES / "server.yaml"))
    waited = n.kubectl(
        "wait", "--for=condition=Ready", "server/web-1", "--timeout=180s", timeout=200, check=False
    )
    if waited.returncode != 0:
        pytest.fail(f"web-1 not Ready through the agent pod in 180 s:\n{_diagnosis(n)}")
    print(f"apply -> Ready through the agent pod: {time.monotonic() - started:.1f}s")
    srv = _get(n, "server", "web-1", "default")
    assert srv["status"]["phase"] == "ACTIVE"
    assert srv["status"]["nodeName"] == node.NAME
    uid = srv["metadata"]["uid"]
    assert n.libvirt is not None
    assert n.libvirt.virsh("domstate", uid).strip() == "running"
    console = eventually(
        lambda: "kubenova-uptime" in n.console(uid) and n.console(uid),
        120,
        what="the guest's uptime counter on its console",
    )
    assert guestimage.MARKER in console
    assert f"disk /dev/vda: {guestimage.DISK_MARKER}" in console
    # The agent that did it is the pod's (there is no other agent on this cluster).
    agent = _running_ready(_pods(n, "agent"))[0]
    logs = n.kubectl("logs", "-n", NS, agent).stdout
    assert f"agent for host {node.NAME} started" in logs


def test_helm_upgrade_rolls_the_agent_while_the_guest_keeps_running(installed: ChartBed) -> None:
    n = installed.node
    uid = _get(n, "server", "web-1", "default")["metadata"]["uid"]
    before_pods = _running_ready(_pods(n, "agent"))
    before_uptime = helpers.last_uptime(n.console(uid))
    assert before_uptime > 0
    _upgrade(
        n,
        "--set-string",
        "agent.podAnnotations.kubenova\\.io/rollout=2",
        "--set",
        f"agent.extraArgs={{--heartbeat-seconds=5,{','.join(IMAGE_SOURCE_ARGS)}}}",
    )
    after_pods = eventually(
        lambda: (p := _running_ready(_pods(n, "agent"))) and set(p).isdisjoint(before_pods) and p,
        120,
        what="a new agent pod in place of the old one",
    )
    assert len(after_pods) == 1
    new_pod = _get(n, "pod", after_pods[0], NS)
    assert "--heartbeat-seconds=5" in new_pod["spec"]["containers"][0]["args"]
    # The guest never stopped: one boot, its own clock still counting.
    assert n.libvirt is not None
    assert n.libvirt.virsh("domstate", uid).strip() == "running"
    eventually(
        lambda: helpers.last_uptime(n.console(uid)) > before_uptime + 2,
        60,
        what="the guest's uptime counter to go on",
    )
    assert helpers.boots(n.console(uid)) == 1
    # The new agent took the guest over: the Server is still Ready, reported by it.
    srv = _get(n, "server", "web-1", "default")
    assert srv["status"]["phase"] == "ACTIVE"
    assert condition(srv, "Ready")["status"] == "True"
    logs = n.kubectl("logs", "-n", NS, after_pods[0]).stdout
    assert f"agent for host {node.NAME} started" in logs


def test_networking_through_the_chart_gives_guests_dhcp_and_their_gateway(
    installed: ChartBed,
) -> None:
    """``agent.networking.enabled``: the agent's pod plumbs the node (tunnel address from the
    node's InternalIP, a bridge, a DHCP server and a gateway in namespaces kept on the host);
    a guest on a tenant network gets its address by DHCP and reaches its gateway."""
    n = installed.node
    _upgrade(n, "--set", "agent.networking.enabled=true")
    _eventually_or_diagnose(
        n,
        lambda: (
            ((_get(n, "hypervisor", node.NAME).get("status") or {}).get("network") or {}).get(
                "tunnelAddress"
            )
            == node.NODE_IP
        ),
        120,
        "the Hypervisor publishing the node's InternalIP as its tunnel address",
    )
    (agent,) = eventually(
        lambda: _running_ready(_pods(n, "agent")), 60, what="the new agent pod Running and Ready"
    )
    assert _get(n, "pod", agent, NS)["spec"]["containers"][0]["securityContext"]["privileged"]
    cidr = "192.168.77.0/24"
    network = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Network",
        "metadata": {"name": "chart-net", "namespace": "default"},
        "spec": {"cidr": cidr},
    }
    n.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(network))
    script = helpers.REACH + "reach gateway 192.168.77.1 90\n"
    n.kubectl(
        "apply",
        "-f",
        "-",
        stdin=_server("net-1", networks=[{"networkRef": "chart-net"}], userData=script),
    )
    n.kubectl("wait", "--for=condition=Ready", "server/net-1", "--timeout=180s", timeout=200)
    srv = _get(n, "server", "net-1", "default")
    (address,) = srv["status"]["addresses"]
    uid = srv["metadata"]["uid"]
    pattern = re.compile(r"kubenova-net eth0 (\S+) mac=(\S+) gw=\S* mtu=\S* source=(\S+)")
    line = _eventually_or_diagnose(
        n,
        lambda: pattern.search(n.console(uid)),
        150,
        "net-1's network line on its console",
        uid,
    )
    assert line.group(1).split("/")[0] == address["ip"], line.group(0)
    assert (line.group(2), line.group(3)) == (address["mac"], "dhcp"), line.group(0)
    reached = eventually(
        lambda: re.search(r"kubenova-reach gateway (ok|fail)", n.console(uid)),
        150,
        what="net-1 trying its gateway",
    )
    assert reached.group(1) == "ok", n.console(uid)[-2000:]
    n.kubectl("delete", "server", "net-1", "--timeout=120s", timeout=150)
    n.kubectl("delete", "network", "chart-net", "--timeout=60s", timeout=90)


def test_deleting_the_leader_pod_lets_the_standby_bind_the_next_server(
    installed: ChartBed,
) -> None:
    n = installed.node
    holder = _lease_holder(n)
    leader_pod = holder.split("_")[0]
    standby = [p for p in _running_ready(_pods(n, "controller")) if p != leader_pod]
    assert len(standby) == 1, (leader_pod, standby)
    n.kubectl("delete", "pod", "-n", NS, leader_pod, "--wait=false")
    deleted = time.monotonic()
    # The leader hands the Lease back as it stops; the Server is created once the standby
    # leads, so that it is the standby's to bind.
    eventually(
        lambda: _lease_holder(n).split("_")[0] == standby[0],
        30,
        step=0.1,
        what=f"{standby[0]} leading",
    )
    took_over = time.monotonic() - deleted
    n.kubectl("apply", "-f", "-", stdin=_server("web-2"))
    eventually(
        lambda: (_get(n, "server", "web-2", "default").get("status") or {}).get("nodeName"),
        60,
        step=0.1,
        what="web-2 bound",
    )
    took = time.monotonic() - deleted
    print(f"leader pod deleted -> standby leads: {took_over:.1f}s, next Server bound: {took:.1f}s")
    assert took < 15, f"the standby bound web-2 {took:.1f}s after the leader pod was deleted"
    # Bound once, by one controller.
    events = json.loads(
        n.kubectl(
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=web-2,reason=Scheduled",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert sum(int(e.get("count") or 1) for e in events) == 1
    # The Deployment replaces the deleted pod, which stands by.
    eventually(
        lambda: len(_running_ready(_pods(n, "controller"))) == 2,
        120,
        what="two controller pods again",
    )
    n.kubectl("delete", "server", "web-2", "-n", "default", "--timeout=120s", timeout=150)


def test_the_agent_pods_credentials_reach_only_its_own_node(installed: ChartBed) -> None:
    """The chart's admission policies, with the identity a pod really has: a token bound to
    the agent's pod names the pod's node; writes to another node's objects are refused."""
    n = installed.node
    agent = _running_ready(_pods(n, "agent"))[0]
    token = n.kubectl(
        "create", "token", f"{RELEASE}-kubenova-agent", "-n", NS,
        "--bound-object-kind=Pod", f"--bound-object-name={agent}", "--duration=10m",
    ).stdout.strip()  # fmt: skip
    other = {"apiVersion": constants.API_VERSION, "kind": "Hypervisor",
             "metadata": {"name": "some-other-node"}}  # fmt: skip
    n.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))

    def as_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return n.kubectl("--token", token, *args, check=False)

    status = ("--subresource=status", "--type=merge", "-p")
    own = as_agent("patch", "hypervisor", node.NAME, *status, '{"status":{"runningVMs":1}}')
    assert own.returncode == 0, own.stderr
    out = as_agent("patch", "hypervisor", "some-other-node", *status, '{"status":{"runningVMs":1}}')
    assert out.returncode != 0 and "not this node's Hypervisor" in out.stderr, out.stderr
    # Its own Server (bound here) it reports on, but cannot send to another node.
    out = as_agent(
        "patch", "server", "web-1", "-n", "default", *status,
        '{"status":{"nodeName":"some-other-node"}}',
    )  # fmt: skip
    assert out.returncode != 0 and "nodeName and the controller" in out.stderr, out.stderr
    assert _get(n, "server", "web-1", "default")["status"]["nodeName"] == node.NAME
    n.kubectl("delete", "hypervisor", "some-other-node", "--wait=false")


def test_helm_uninstall_leaves_no_workload_but_keeps_the_crds(installed: ChartBed) -> None:
    n = installed.node
    # Servers first: their guests are the agent's to tear down (the CRDs, and so any Server
    # left, survive the uninstall).
    n.kubectl("delete", "servers", "--all", "-A", "--timeout=120s", timeout=150)
    n.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
    selector = f"app.kubernetes.io/instance={RELEASE}"
    kinds = "deployments,daemonsets,replicasets,pods,services,serviceaccounts,roles,rolebindings"
    eventually(
        lambda: n.kubectl("get", kinds, "-n", NS, "-l", selector, "-o", "name").stdout == "",
        120,
        what="no namespaced object of the release left",
    )
    assert n.kubectl("get", "pods", "-n", NS, "-o", "name").stdout == ""
    cluster = n.kubectl(
        "get",
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
        "validatingadmissionpolicybindings,mutatingadmissionpolicies,"
        "mutatingadmissionpolicybindings",
        "-l",
        selector,
        "-o",
        "name",
    )
    assert cluster.stdout == ""
    crds = n.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=kubenova", "-o", "name")
    # Every CRD the chart carries (one per kind) is still there.
    chart_crds = list((stack.DEPLOY / "helm" / "kubenova" / "crds").glob("*.yaml"))
    assert len(crds.stdout.split()) == len(chart_crds)
    assert n.libvirt is not None
    assert n.libvirt.virsh("list", "--all", "--name").split() == []
