"""The agent and the controller never wedge (issue 13): the API server frozen (SIGSTOP) for 60 s
while they work — every call they make has a client timeout, failed calls are retried with
bounded back-off, watches resume — and once it runs again, everything converges."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(300)

NS = "paused"
HOST = "px-a"
PAUSE = 60.0


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> Iterator[stack.Stack]:
    api.start_controller()
    api.start_sim_agent(HOST, cpus=2, memory_mib=1024)
    api.kubectl("create", "namespace", NS, check=False)
    docs = [
        {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Flavor",
            "metadata": {"name": "px.small"},
            "spec": {"vcpus": 1, "memoryMiB": 256, "diskGiB": 1},
        },
        api.image_manifest("px-image", architecture="i686"),  # what the test driver runs
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    yield api
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    api.agents.pop(HOST).stop()
    assert api.controller is not None
    api.controller.stop()
    api.kubectl("delete", "hv", HOST, "--wait=false", check=False)
    api.kubectl("delete", "flavor", "px.small", "--wait=false", check=False)
    api.kubectl("delete", "image", "px-image", "--wait=false", check=False)


def apply_server(api: stack.Stack, name: str, **spec: str) -> None:
    body = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"flavorRef": "px.small", "imageRef": "px-image", **spec},
    }
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def phase(api: stack.Stack, name: str) -> str:
    return ((api.get("server", name, NS) or {}).get("status") or {}).get("phase", "")


def test_a_frozen_api_server_resumed_everything_converges(bed: stack.Stack) -> None:
    eventually(
        lambda: condition(bed.get("hv", HOST), "Up").get("status") == "True", 60, what="host up"
    )
    apply_server(bed, "before")
    bed.kubectl("wait", "--for=condition=Ready", "srv/before", "-n", NS, "--timeout=60s")
    apiserver = next(p for name, p, _ in bed.cp.processes() if name == "kube-apiserver")
    apiserver.send_signal(signal.SIGSTOP)
    try:
        time.sleep(PAUSE)  # heartbeats, watches and resyncs run into their timeouts meanwhile
    finally:
        apiserver.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    assert bed.controller is not None and bed.controller.alive
    assert bed.agents[HOST].alive
    # Work that needs the controller's and the agent's watches, and their write paths.
    bed.kubectl("patch", "srv", "before", "-n", NS, "--type", "merge", "-p",
                '{"spec":{"powerState":"Stopped"}}')  # fmt: skip
    apply_server(bed, "after")
    eventually(lambda: phase(bed, "before") == "SHUTOFF", 45, step=0.5, what="before SHUTOFF")
    eventually(lambda: phase(bed, "after") == "ACTIVE", 45, step=0.5, what="after ACTIVE")
    took = time.monotonic() - resumed
    hv = bed.get("hv", HOST) or {}
    assert condition(hv, "Up").get("status") == "True", "heartbeats resumed"
    print(f"converged {took:.1f}s after the API server resumed from a {PAUSE:.0f}s freeze")
