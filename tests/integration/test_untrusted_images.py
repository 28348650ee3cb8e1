"""Images are untrusted input, through the whole path: a Server whose Image points at the host's
loopback, redirects there, or is a qcow2 naming a host file goes ERROR within seconds with the
reason as its condition and an Event — and the servers the URLs point at never see a request.

The agent runs on a simulated host (libvirt's test driver) with the source policy an admin
would write for a mirror on 127.0.0.3; the "host's secrets" are served on 127.0.0.1 and
127.0.0.2, which that policy does not permit."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import condition, eventually
from tests.unit.recording_http import RecordingServer

pytestmark = pytest.mark.timeout(300)

NS = "untrusted"
HOST = "img-a"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    secret = RecordingServer("127.0.0.1")
    secret.serve("/secret", b"the host's secret")
    mirror = RecordingServer("127.0.0.3")
    yield secret, mirror
    secret.stop()
    mirror.stop()


@pytest.fixture(scope="module")
def bed(
    api: stack.Stack, servers: tuple[RecordingServer, RecordingServer]
) -> Iterator[stack.Stack]:
    api.start_controller()
    api.start_sim_agent(
        HOST,
        cpus=2,
        memory_mib=2048,
        extra_args=("--image-permitted-networks", "127.0.0.3/32", "--image-allowed-ports", "*"),
    )
    api.kubectl("create", "namespace", NS, check=False)
    api.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "compute.kubenova.io/v1alpha1",
                "kind": "Flavor",
                "metadata": {"name": "untrusted.small"},
                "spec": {"vcpus": 1, "memoryMiB": 128, "diskGiB": 1},
            }
        ),
    )
    eventually(
        lambda: f"/{HOST}\n" in api.kubectl("get", "hv", "-o", "name").stdout,
        60,
        what="the Hypervisor registered",
    )
    yield api
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    api.agents.pop(HOST).stop()
    assert api.controller is not None
    api.controller.stop()
    # Leave the session's API server as found: other modules count the Hypervisors.
    api.kubectl("delete", "hv", HOST, "--timeout=60s", check=False, timeout=90)
    api.kubectl("delete", "flavor", "untrusted.small", check=False)
    api.kubectl("delete", "images", "-l", "kubenova.test/untrusted=yes", check=False)


def boot(bed: stack.Stack, name: str, url: str, sha256: str) -> dict[str, Any]:
    """An Image of one qcow2 disk at ``url`` and a Server of it; returns the Server's status
    once it is ERROR, with how long that took."""
    image = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Image",
        "metadata": {"name": name, "labels": {"kubenova.test/untrusted": "yes"}},
        "spec": {
            "source": {"disk": {"url": url, "sha256": sha256, "format": "qcow2"}},
            "architecture": "i686",
        },
    }
    server = {
        "apiVersion": "compute.kubenova.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"flavorRef": "untrusted.small", "imageRef": name},
    }
    bed.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([image, server]))
    started = time.monotonic()

    def errored() -> dict[str, Any] | None:
        obj = bed.get("server", name, NS)
        status = (obj or {}).get("status") or {}
        return obj if status.get("phase") == "ERROR" else None

    obj = eventually(errored, 60, step=0.25, what=f"{name} in ERROR")
    took = time.monotonic() - started
    events = bed.kubectl(
        "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}",
        "-o", "jsonpath={range .items[*]}{.reason}{' '}{end}",
    ).stdout.split()  # fmt: skip
    ready = condition(obj, "Ready")
    print(f"{name}: ERROR after {took:.1f}s: {ready.get('reason')}: {ready.get('message')}")
    return {"ready": ready, "events": events, "took": took}


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_loopback_sources_and_redirects_are_refused_and_never_fetched(
    bed: stack.Stack, servers: tuple[RecordingServer, RecordingServer]
) -> None:
    secret, mirror = servers
    sha = hashlib.sha256(b"the host's secret").hexdigest()  # would pass if fetched
    cases = {
        "direct": secret.url("/secret"),
        "by-name": secret.url("/secret", host="localhost"),
        "other-loopback": f"http://127.0.0.2:{secret.port}/secret",
        "redirect": mirror.url(f"/redirect?to={secret.url('/secret')}"),
    }
    for name, url in cases.items():
        got = boot(bed, f"loop-{name}", url, sha)
        assert got["ready"]["reason"] == "ImageSourceRefused", (name, got)
        assert "loopback" in got["ready"]["message"], got
        assert "ImageSourceRefused" in got["events"], got
        assert got["took"] < 30, got
    assert secret.seen == []  # the host's secret was never asked for
    assert [s.path for s in mirror.seen] == [f"/redirect?to={secret.url('/secret')}"]


@pytest.mark.parametrize("variant", ["data-file", "backing-file"])
def test_a_qcow2_naming_a_host_file_is_refused_as_invalid(
    bed: stack.Stack,
    servers: tuple[RecordingServer, RecordingServer],
    tmp_path: pathlib.Path,
    variant: str,
) -> None:
    _, mirror = servers
    disk = tmp_path / "evil.qcow2"
    if variant == "data-file":
        data = tmp_path / "data.raw"
        qemu_img("create", "-f", "raw", str(data), "1M")
        qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(disk), "1M")
        qemu_img("amend", "-f", "qcow2", "-o", "data_file=/etc/shadow", str(disk))
    else:
        qemu_img("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(disk), "1M")
    body = disk.read_bytes()
    url = mirror.serve(f"/{variant}.qcow2", body)
    got = boot(bed, f"evil-{variant}", url, hashlib.sha256(body).hexdigest())
    assert got["ready"]["reason"] == "ImageInvalid", got
    assert variant.replace("-", " ") in got["ready"]["message"], got
    assert "ImageInvalid" in got["events"], got
    assert got["took"] < 30, got
    assert sum(s.path == f"/{variant}.qcow2" for s in mirror.seen) == 1  # not fetched again
