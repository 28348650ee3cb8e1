"""What only the controller or the agent can judge becomes a condition and an Event: a missing
Flavor makes a Server wait (and boot once it appears); a bad checksum ends in ERROR."""

from __future__ import annotations

import time

import pytest

from kubenova_devenv import stack
from tests.conftest import condition, eventually
from tests.e2e import helpers

pytestmark = pytest.mark.timeout(300)


def events_for(bed: stack.Stack, namespace: str, name: str) -> str:
    return bed.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
    ).stdout


def test_server_waits_for_its_flavor_then_boots(bed: stack.Stack, namespace: str) -> None:
    flavor = f"late-{namespace}"
    helpers.apply(bed, helpers.server("waiter", namespace, flavor=flavor))

    def waiting() -> dict[str, str]:
        cond = condition(bed.get("server", "waiter", namespace), "Scheduled")
        return cond if cond.get("reason") == "FlavorNotFound" else {}

    cond = eventually(waiting, 30, what="Scheduled=False/FlavorNotFound")
    assert cond["status"] == "False"
    assert f"Flavor '{flavor}' does not exist" in cond["message"]
    srv = bed.get("server", "waiter", namespace)
    assert srv is not None
    assert srv["status"]["phase"] == "BUILD" and "nodeName" not in srv["status"]
    assert "FlavorNotFound" in events_for(bed, namespace, "waiter")

    helpers.apply(bed, helpers.flavor(flavor))
    helpers.wait_ready(bed, namespace, "waiter")
    srv = bed.get("server", "waiter", namespace)
    assert srv is not None and srv["status"]["phase"] == "ACTIVE"
    bed.wait_console(srv["status"]["nodeName"], srv["metadata"]["uid"], "kubenova-uptime")
    bed.kubectl("delete", "flavor", flavor, "--wait=false")


def test_image_checksum_mismatch_ends_in_error_and_never_boots(
    bed: stack.Stack, namespace: str
) -> None:
    image = f"bad-sum-{namespace}"
    name, sha = bed.disk_variant(namespace)  # a file no host has cached yet
    manifest = bed.image_manifest(image)
    manifest["spec"]["source"]["uec"]["disk"]["url"] = bed.image_server.url(name)  # type: ignore[union-attr]
    manifest["spec"]["source"]["uec"]["disk"]["sha256"] = "0" * 64
    bed.kubectl("apply", "-f", "-", stdin=__import__("yaml").safe_dump(manifest))
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server("bad", namespace, image=image))

    def errored() -> dict | None:
        srv = bed.get("server", "bad", namespace)
        return srv if (srv or {}).get("status", {}).get("phase") == "ERROR" else None

    srv = eventually(errored, 60, what="phase ERROR")
    ready = condition(srv, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "ImageChecksumMismatch"
    assert "0" * 64 in ready["message"] and sha in ready["message"]
    assert "ImageChecksumMismatch" in events_for(bed, namespace, "bad")
    # Never booted: no domain anywhere, no disk, and the bad download was not kept.
    assert helpers.domains_for(bed, namespace, "bad") == []
    assert helpers.volumes_for(bed, srv["metadata"]["uid"]) == []
    host = bed.hosts[srv["status"]["nodeName"]]
    cached = list(host.outside("/var/lib/kubenova/images").iterdir())
    assert all(p.name != "0" * 64 and p.name != sha for p in cached)
    # Deleting a Server in ERROR works and leaves nothing behind.
    bed.kubectl("delete", "server", "bad", "-n", namespace, "--timeout=60s", timeout=90)
    bed.kubectl("delete", "image", image, "--wait=false")


def test_an_unknown_cpu_model_is_a_condition_and_an_event_within_ten_seconds(
    bed: stack.Stack, namespace: str
) -> None:
    """Issue 13: a Flavor's hw:cpu_model that libvirt does not know left its Server in BUILD
    forever, the reason only in the agent's log. The host's check runs before anything is
    fetched or defined."""
    flavor = f"bogus-cpu-{namespace}"
    body = __import__("yaml").safe_load(helpers.flavor(flavor))
    body["spec"]["extraSpecs"] = {"hw:cpu_mode": "custom", "hw:cpu_model": "Bogus-CPU-9000"}
    bed.kubectl("apply", "-f", "-", stdin=__import__("yaml").safe_dump(body))
    helpers.apply(bed, helpers.server("oddcpu", namespace, flavor=flavor))

    def bound() -> bool:
        srv = bed.get("server", "oddcpu", namespace) or {}
        return bool(srv.get("status", {}).get("nodeName"))

    eventually(bound, 30, step=0.1, what="the Server bound to a host")
    started = time.monotonic()

    def errored() -> dict | None:
        srv = bed.get("server", "oddcpu", namespace)
        return srv if condition(srv, "Ready").get("reason") == "CPUModelUnknown" else None

    srv = eventually(errored, 10, step=0.2, what="Ready=False/CPUModelUnknown")
    assert time.monotonic() - started < 10
    assert srv["status"]["phase"] == "ERROR"
    assert "Bogus-CPU-9000" in condition(srv, "Ready")["message"]
    eventually(
        lambda: "CPUModelUnknown" in events_for(bed, namespace, "oddcpu"),
        10,
        what="a Warning Event CPUModelUnknown",
    )
    assert helpers.domains_for(bed, namespace, "oddcpu") == [], "nothing was defined"
    bed.kubectl("delete", "server", "oddcpu", "-n", namespace, "--timeout=60s", timeout=90)
    bed.kubectl("delete", "flavor", flavor, "--wait=false")
