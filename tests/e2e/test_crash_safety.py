"""Killing the agent at any moment of a spawn and starting it again converges to exactly one
running domain for the Server: no second domain, no orphaned disk, no half-written image."""

from __future__ import annotations

import pytest
import yaml

from kubenova_devenv import stack
from tests.conftest import eventually
from tests.e2e import helpers

pytestmark = pytest.mark.timeout(400)


def _bound_host(bed: stack.Stack, namespace: str, name: str) -> str:
    def bound() -> str | None:
        srv = bed.get("server", name, namespace)
        return ((srv or {}).get("status") or {}).get("nodeName")

    return str(eventually(bound, 60, step=0.05, what=f"{name} bound to a host"))


def _assert_exactly_one(bed: stack.Stack, namespace: str, name: str) -> None:
    helpers.wait_ready(bed, namespace, name)
    srv = bed.get("server", name, namespace)
    assert srv is not None and srv["status"]["phase"] == "ACTIVE"
    uid, host = srv["metadata"]["uid"], srv["status"]["nodeName"]
    assert helpers.domains_for(bed, namespace, name) == [(host, uid)]
    assert bed.hosts[host].virsh("domstate", uid).strip() == "running"
    assert sorted(helpers.volumes_for(bed, uid)) == [
        (host, f"{uid}-config.iso"),
        (host, f"{uid}-root.qcow2"),
    ]
    images = bed.hosts[host].outside("/var/lib/kubenova/images")
    assert [p.name for p in images.iterdir() if p.name.startswith(".")] == []
    bed.wait_console(host, uid, "kubenova-uptime")


@pytest.mark.parametrize("moment", ["downloading", "defined"])
def test_agent_killed_mid_spawn_leaves_exactly_one_domain(
    bed: stack.Stack, namespace: str, moment: str
) -> None:
    image = f"slow-{namespace}"
    disk_name, sha = bed.disk_variant(namespace)  # uncached everywhere: a real download
    manifest = bed.image_manifest(image)
    manifest["spec"]["source"]["uec"]["disk"] = {
        "url": bed.image_server.url(disk_name, slow=True),  # type: ignore[union-attr]
        "sha256": sha,
        "format": "qcow2",
    }
    helpers.apply(bed, yaml.safe_dump(manifest))
    bed.kubectl("apply", "-f", str(stack.EXAMPLES / "flavor.yaml"))
    helpers.apply(bed, helpers.server("victim", namespace, image=image))
    host_name = _bound_host(bed, namespace, "victim")
    host = bed.hosts[host_name]
    images = host.outside("/var/lib/kubenova/images")

    if moment == "downloading":
        # The slow disk download is under way: a partial file exists in the image cache.
        eventually(
            # (the cache folder itself appears with the first download)
            lambda: images.is_dir() and any(p.name.startswith(".") for p in images.iterdir()),
            30,
            step=0.05,
            what="a download in progress",
        )
    else:
        srv = bed.get("server", "victim", namespace)
        assert srv is not None
        uid = srv["metadata"]["uid"]
        eventually(lambda: host.has_domain(uid), 60, step=0.02, what="the domain defined")
    bed.agents[host_name].kill()

    restarted = bed.start_agent(host_name)
    assert restarted.alive
    _assert_exactly_one(bed, namespace, "victim")
    bed.kubectl("delete", "server", "victim", "-n", namespace, "--timeout=60s", timeout=90)
    bed.kubectl("delete", "image", image, "--wait=false")
