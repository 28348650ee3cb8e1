"""Two controllers with ``--leader-elect`` against a real API server: one acts, the other
stands by; when the leader is killed outright (no chance to hand the Lease back) the standby
takes over and binds the next Server within 15 s, and no Server is bound twice; a leader that
stops normally hands the Lease back at once."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(240)

NS = "leader"
HOST = "lead-a"
LEASE = "kubenova-controller"


def _controller(api: stack.Stack, name: str) -> stack.Proc:
    proc = stack.Proc(
        name,
        [
            sys.executable,
            "-m",
            "kubenova_operator.main",
            "--kubeconfig",
            str(api.cp.kubeconfig("kubenova:controller")),
            "--leader-elect",
            "--leader-elect-namespace",
            NS,
            "--resync-seconds",
            "5",
        ],
        api.workdir / f"{name}.log",
        {**api.env(), "POD_NAME": name},
    )
    proc.start()
    return proc


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> Iterator[stack.Stack]:
    """A simulated host, and the Lease permissions the chart's Role gives (here to the local
    controller user's group)."""
    api.kubectl("create", "namespace", NS, check=False)
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "leader-election", "namespace": NS},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "leader-election", "namespace": NS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "leader-election",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "kubenova:controllers",
                }
            ],
        },
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    agent = api.start_sim_agent(HOST, cpus=8, memory_mib=8192)
    api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [
                {
                    "apiVersion": "compute.kubenova.io/v1alpha1",
                    "kind": "Flavor",
                    "metadata": {"name": "lead.small"},
                    "spec": {"vcpus": 1, "memoryMiB": 128, "diskGiB": 1},
                },
                api.image_manifest("lead-image", architecture="i686"),
            ]
        ),
    )
    yield api
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    agent.stop()
    api.agents.pop(HOST, None)
    # Its Hypervisor would look up for a while yet to the modules that follow.
    api.kubectl("delete", "hypervisor", HOST, "--wait=false", check=False)


def _lease(api: stack.Stack) -> dict[str, Any]:
    return api.get("lease", LEASE, NS) or {}


def _holder(api: stack.Stack) -> str:
    return str((_lease(api).get("spec") or {}).get("holderIdentity") or "")


def _server(api: stack.Stack, name: str) -> None:
    api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Server",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"flavorRef": "lead.small", "imageRef": "lead-image", "hostName": HOST},
            }
        ),
    )


def _node(api: stack.Stack, name: str) -> str:
    return str(((api.get("server", name, NS) or {}).get("status") or {}).get("nodeName") or "")


def _scheduled_events(api: stack.Stack, name: str) -> int:
    out = api.kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        f"involvedObject.name={name},reason=Scheduled",
        "-o",
        "yaml",
    ).stdout
    return sum(int(e.get("count") or 1) for e in yaml.safe_load(out)["items"])


def test_a_standby_takes_over_from_a_killed_leader_and_binds_within_15s(bed: stack.Stack) -> None:
    first = _controller(bed, "controller-1")
    second: stack.Proc | None = None
    try:
        eventually(lambda: _holder(bed).startswith("controller-1_"), 60, what="controller-1 leads")
        second = _controller(bed, "controller-2")
        log = second.log_path
        eventually(
            lambda: "standing by: controller-1_" in log.read_text(), 60, what="controller-2 waits"
        )
        _server(bed, "before")
        eventually(lambda: _node(bed, "before") == HOST, 60, what="the leader binds 'before'")
        # The standby stood by all along: the Lease never changed hands.
        assert _holder(bed).startswith("controller-1_")
        transitions = _lease(bed)["spec"].get("leaseTransitions", 0)

        first.kill()  # SIGKILL: the Lease is not handed back, the standby must wait it out
        killed = time.monotonic()
        _server(bed, "after")
        eventually(lambda: _node(bed, "after") == HOST, 30, what="the standby binds 'after'")
        took = time.monotonic() - killed
        print(f"leader killed -> next Server bound by the standby: {took:.1f}s")
        assert took < 15, f"the standby took {took:.1f}s"
        assert _holder(bed).startswith("controller-2_")
        assert _lease(bed)["spec"]["leaseTransitions"] == transitions + 1
        # Bound once each, by one controller at a time.
        time.sleep(2)
        assert _scheduled_events(bed, "before") == 1
        assert _scheduled_events(bed, "after") == 1

        # A leader asked to stop hands the Lease back (a successor need not wait it out).
        assert second.popen is not None
        second.stop(signal.SIGTERM, timeout=30)
        assert second.popen.returncode == 0, second.log_path.read_text()[-2000:]
        assert _holder(bed) == ""
        assert "released the lease" in second.log_path.read_text()
    finally:
        first.stop()
        if second is not None:
            second.stop()
