"""The whole of kubenova on hosts that have their own network (``Stack(networking=True)``):
libvirtd, its guests and the agent run inside each host's network namespace, and a live
migration goes over the hosts' underlay addresses (libvirt's ``migration_host``), not
loopback."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
import yaml

from kubenova_devenv import netutil, stack
from tests.e2e import helpers

from .conftest import unique_namespace
from .test_migration import boot_on, migrate, wait_phase

pytestmark = [pytest.mark.libvirtd, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def nbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    s = stack.Stack(
        pathlib.Path(tmp_path_factory.mktemp("netns")),
        host_count=2,
        shared_instances=("host-a", "host-b"),
        networking=True,
    )
    with s:
        s.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(s.image_manifest()))
        helpers.apply(s, helpers.flavor("m1.tiny"))
        yield s


@pytest.fixture
def ns(nbed: stack.Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from unique_namespace(nbed, request, "n")


def netns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_live_migration_between_hosts_with_their_own_network(nbed: stack.Stack, ns: str) -> None:
    assert nbed.net is not None
    uid = boot_on(nbed, ns, "web", "host-a")
    for name, host in nbed.hosts.items():
        own = os.stat(f"/run/netns/{nbed.net.hosts[name].netns}").st_ino
        assert netns_of(host.pid) == own, f"libvirtd of {name} is not in its namespace"
        assert own != netns_of(os.getpid())
    (guest_pid,) = nbed.hosts["host-a"].guest_pids()
    assert netns_of(guest_pid) == netns_of(nbed.hosts["host-a"].pid)
    hv = nbed.get("hypervisor", "host-b")
    assert hv is not None
    assert hv["status"]["migration"]["address"] == str(nbed.net.hosts["host-b"].underlay_address)

    migrate(nbed, ns, "move", "web", targetNode="host-b")
    done = wait_phase(nbed, ns, "move", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    netutil.wait_until(
        lambda: nbed.hosts["host-b"].guest_pids() != [], 30, "the guest's QEMU on host-b"
    )
    (moved_pid,) = nbed.hosts["host-b"].guest_pids()
    assert netns_of(moved_pid) == netns_of(nbed.hosts["host-b"].pid)
    assert helpers.domains_for(nbed, ns, "web") == [("host-b", uid)]
