"""A Server applied with kubectl boots a real QEMU guest on the host it is bound to, and
deleting it removes every trace: domain, disks, console, finalizer."""

from __future__ import annotations

import time

import pytest

from kubenova_devenv import guestimage, stack
from tests.conftest import condition
from tests.e2e import helpers

pytestmark = pytest.mark.timeout(300)


def test_example_server_boots_and_is_deleted_without_a_trace(
    bed: stack.Stack, namespace: str
) -> None:
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    example = (
        (stack.EXAMPLES / "server.yaml")
        .read_text()
        .replace("namespace: default", f"namespace: {namespace}")
    )
    started = time.monotonic()
    helpers.apply(bed, example)
    waited = helpers.wait_ready(bed, namespace, "web-1")
    print(f"apply -> Ready: {time.monotonic() - started:.2f}s")
    assert "condition met" in waited.stdout

    srv = bed.get("server", "web-1", namespace)
    assert srv is not None
    status = srv["status"]
    uid = srv["metadata"]["uid"]
    assert status["phase"] == "ACTIVE"
    assert status["powerState"] == "Running"
    assert status["flavor"] == {"vcpus": 1, "memoryMiB": 128, "diskGiB": 1, "name": "m1.tiny"}
    assert condition(srv, "Scheduled")["status"] == "True"
    assert "compute.kubenova.io/domain" in srv["metadata"]["finalizers"]

    bound = status["nodeName"]
    other = next(h for h in bed.hosts if h != bound)
    # The domain runs on the bound host, with the Server's UID as its UUID, and nowhere else.
    assert bed.hosts[bound].virsh("domstate", uid).strip() == "running"
    assert not bed.hosts[other].has_domain(uid)
    assert helpers.domains_for(bed, namespace, "web-1") == [(bound, uid)]
    xml = bed.hosts[bound].virsh("dumpxml", uid)
    assert "<memory unit='KiB'>131072</memory>" in xml

    console = bed.wait_console(bound, uid, "kubenova-uptime", timeout=90)
    assert guestimage.MARKER in console
    assert f"disk /dev/vda: {guestimage.DISK_MARKER}" in console  # booted over the qcow2 overlay

    wide = bed.kubectl("get", "srv", "-n", namespace, "-o", "wide").stdout
    assert "ACTIVE" in wide and bound in wide and "m1.tiny" in wide and "Running" in wide

    volumes = helpers.volumes_for(bed, uid)
    assert sorted(volumes) == [(bound, f"{uid}-config.iso"), (bound, f"{uid}-root.qcow2")]

    bed.kubectl("delete", "server", "web-1", "-n", namespace, "--timeout=60s", timeout=90)
    assert bed.get("server", "web-1", namespace) is None  # the finalizer was released
    assert not bed.hosts[bound].has_domain(uid)
    assert helpers.volumes_for(bed, uid) == []
    assert bed.console(bound, uid) == ""
