"""A dead host strands nothing (issue 13): a host killed (its agent and its libvirt: a simulated
host's domains live in the agent's process), then marked out of service by an admin — its
deleted Server goes away cleanly, its other Server is rebuilt on another host with the same
identity, and the host restarted removes the stale guest before it starts anything."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Iterator

import pytest
import yaml
from lxml import etree

from kubenova_agent.libvirt import domain_xml
from kubenova_agent.main import Agent
from kubenova_agent.settings import AgentSettings
from kubenova_devenv import simhost, stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(240)

NS = "fenced"
DEAD, LIVE = "fx-dead", "fx-live"
GRACE = 8.0
"""The controller's heartbeat grace here (the bed's agents heartbeat every 2 s)."""
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> Iterator[stack.Stack]:
    api.start_controller(
        dataclasses.replace(api.controller_settings(), heartbeat_grace_seconds=GRACE)
    )
    api.kubectl("create", "namespace", NS, check=False)
    docs = [
        {
            "apiVersion": "compute.kubenova.io/v1alpha1",
            "kind": "Flavor",
            "metadata": {"name": "fx.small"},
            "spec": {"vcpus": 1, "memoryMiB": 256, "diskGiB": 1},
        },
        api.image_manifest("fx-image", architecture="i686"),  # what the test driver runs
    ]
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    yield api
    api.kubectl("delete", "servers", "--all", "-n", NS, "--timeout=60s", check=False, timeout=90)
    api.stop_agents(DEAD, LIVE)
    assert api.controller is not None
    api.controller.stop()
    api.kubectl("delete", "hv", DEAD, LIVE, "--wait=false", check=False)
    api.kubectl("delete", "flavor", "fx.small", "--wait=false", check=False)
    api.kubectl("delete", "image", "fx-image", "--wait=false", check=False)


def hv_up(api: stack.Stack, name: str) -> str:
    return condition(api.get("hv", name), "Up").get("status", "")


def server(api: stack.Stack, name: str) -> dict | None:
    return api.get("server", name, NS)


def reasons(api: stack.Stack, name: str) -> list[str]:
    return api.kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "jsonpath={range .items[*]}{.reason}{' '}{end}",
    ).stdout.split()


def host_file_with(path: pathlib.Path, guests: list[tuple[str, str]]) -> str:
    """A simulated host whose libvirt still has these guests (namespace/name, uid), off — a
    host powered on again after it died."""
    uri = simhost.write_host_file(path, cpus=2, memory_mib=1024)
    node = etree.parse(str(path)).getroot()
    for full_name, uid in guests:
        namespace, name = full_name.split("/")
        xml = domain_xml.build_domain_xml(
            domain_xml.DomainConfig(
                owner=domain_xml.Owner(namespace, name, uid),
                virt_type=domain_xml.VirtType.test,
                vcpus=1,
                memory_mib=256,
                disks=(),
                console_log="/dev/null",
                arch="i686",
            )
        )
        dom = etree.fromstring(xml.encode())
        etree.SubElement(dom, f"{{{TEST_NS}}}runstate", nsmap={"test": TEST_NS}).text = "5"
        node.append(dom)
    path.write_bytes(etree.tostring(node))
    return uri


def test_a_killed_out_of_service_host_strands_nothing(bed: stack.Stack) -> None:
    bed.start_sim_agent(DEAD, cpus=2, memory_mib=1024)
    eventually(lambda: hv_up(bed, DEAD) == "True", 60, step=0.5, what=f"{DEAD} up")
    for name in ("keep", "gone"):
        bed.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {
                    "apiVersion": "compute.kubenova.io/v1alpha1",
                    "kind": "Server",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"flavorRef": "fx.small", "imageRef": "fx-image"},
                }
            ),
        )
    for name in ("keep", "gone"):
        bed.kubectl("wait", "--for=condition=Ready", f"srv/{name}", "-n", NS, "--timeout=60s")
        assert (server(bed, name) or {})["status"]["nodeName"] == DEAD
    keep_uid = (server(bed, "keep") or {})["metadata"]["uid"]
    gone_uid = (server(bed, "gone") or {})["metadata"]["uid"]
    bed.start_sim_agent(LIVE, cpus=2, memory_mib=1024)
    eventually(lambda: hv_up(bed, LIVE) == "True", 60, step=0.5, what=f"{LIVE} up")

    # The host dies: its agent and, with it, its libvirt (the test driver's domains).
    bed.agents.pop(DEAD).kill()
    bed.kubectl("delete", "server", "gone", "-n", NS, "--wait=false")
    eventually(lambda: hv_up(bed, DEAD) == "False", GRACE + 30, step=0.5, what=f"{DEAD} down")
    # Down is not fenced: without the admin's word nothing is released or moved.
    time.sleep(2)
    gone = server(bed, "gone")
    assert gone is not None and gone["metadata"].get("deletionTimestamp"), "held by its agent"
    assert (server(bed, "keep") or {})["status"]["nodeName"] == DEAD

    bed.kubectl("patch", "hv", DEAD, "--type", "merge", "-p", '{"spec":{"outOfService":true}}')
    marked = time.monotonic()
    eventually(lambda: server(bed, "gone") is None, 10, step=0.2, what="the deleted Server gone")
    assert "DomainMayRemain" in reasons(bed, "gone")

    def rebuilt() -> dict | None:
        srv = server(bed, "keep") or {}
        status = srv.get("status", {})
        ok = status.get("nodeName") == LIVE and status.get("phase") == "ACTIVE"
        return srv if ok else None

    keep = eventually(rebuilt, 30, step=0.2, what=f"keep rebuilt ACTIVE on {LIVE}")
    took = time.monotonic() - marked
    assert keep["metadata"]["uid"] == keep_uid, "the same identity"
    assert keep["status"]["evacuatedFrom"] == DEAD
    assert keep["status"]["diskRebuilt"] is True, "no shared storage: rebuilt from the image"
    assert condition(keep, "Ready")["status"] == "True"
    assert "Evacuating" in reasons(bed, "keep") and "RebuiltFromImage" in reasons(bed, "keep")

    # The host comes back, its libvirt still holding both guests (off after the power loss).
    root = bed.workdir / f"{DEAD}-back"
    uri = host_file_with(root / "host.xml", [(f"{NS}/keep", keep_uid), (f"{NS}/gone", gone_uid)])
    cfg = bed.image_sources(
        AgentSettings(
            host_name=DEAD,
            libvirt_uri=uri,
            virt_type="test",
            state_dir=str(root / "state"),
            kubeconfig=str(bed.agent_kubeconfig(DEAD)),  # the same node identity
            heartbeat_seconds=bed.heartbeat_seconds,
            reserved_memory_mib=0,
            resync_seconds=30.0,
        )
    )
    back = Agent(cfg)
    started: list[tuple[str, str]] = []
    on_event = back._on_domain_event

    def watched(uuid: str, event: str) -> None:
        started.append((uuid, event))
        on_event(uuid, event)

    back.host._on_event = watched  # what libvirt itself reports, started or not
    try:
        assert {d.uuid for d in back.host.domains()} == {keep_uid, gone_uid}
        back.start()
        assert back.swept.wait(30), "the returning agent swept its host"
        assert back.host.domains() == [], "both stale guests removed before anything started"
        assert not [e for e in started if "start" in e[1].lower()], started
        eventually(
            lambda: "StaleDomainRemoved" in reasons(bed, "keep"), 10, what="StaleDomainRemoved"
        )
        time.sleep(1)
        keep = server(bed, "keep") or {}
        assert keep["status"]["nodeName"] == LIVE and keep["status"]["phase"] == "ACTIVE"
    finally:
        back.stop()
    print(f"evacuated and ACTIVE again {took:.1f}s after the host was marked out of service")
