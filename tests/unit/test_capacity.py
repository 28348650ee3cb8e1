"""The capacity the agent publishes when libvirt fails to answer: one failed read is not a
host that is gone (``Ready=False`` makes the controller count the host down at once)."""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import cast

from kubenova_agent import capacity
from kubenova_agent.driver import PoolUsage, Storage
from kubenova_agent.libvirt import errors
from kubenova_agent.libvirt.host import CpuInfo, DomainSummary, Host, HostFacts
from kubenova_agent.settings import AgentSettings
from kubenova_api import common, kube
from kubenova_api.common import Condition
from kubenova_api.resources import HypervisorStatus

GIB = 1 << 30


class FlakyHost:
    """The two calls of :class:`Host` the publisher makes; fails while ``down`` is set."""

    def __init__(self) -> None:
        self.down = False

    def facts(self) -> HostFacts:
        if self.down:
            raise errors.HypervisorError("Cannot recv data: Connection reset by peer")
        cpu = CpuInfo("x86_64", "Haswell", "Intel", ("vmx",), 1, 8, 1)
        return HostFacts("u-1", cpu, 8, 16384, "11.3.0", "QEMU", "9.2.0", True)

    def domains(self) -> list[DomainSummary]:
        if self.down:
            raise errors.HypervisorError("Cannot recv data: Connection reset by peer")
        return []


class Pool:
    def usage(self) -> PoolUsage:
        return PoolUsage(100 * GIB, 0, 100 * GIB)


def publisher(host: FlakyHost) -> capacity.CapacityPublisher:
    settings = AgentSettings(host_name="h1", reserved_memory_mib=0)
    return capacity.CapacityPublisher(
        settings,
        cast("kube.Kube", None),  # compute() writes nothing
        cast("Host", host),
        cast("Storage", Pool()),
        list,
        "kvm",
    )


def ready_condition(status: HypervisorStatus) -> Condition:
    cond = common.get_condition(status.conditions, "Ready")
    assert cond is not None
    return cond


def ready(status: HypervisorStatus) -> tuple[str, str]:
    cond = ready_condition(status)
    return cond.status, cond.reason


def test_one_failed_read_keeps_the_last_figures_two_report_the_host_unreachable() -> None:
    host = FlakyHost()
    pub = publisher(host)
    good = pub.compute()
    assert ready(good) == ("True", "AgentReady")
    assert good.total is not None and good.total.vcpus == 8

    host.down = True
    first = pub.compute()
    assert ready(first) == ("True", "AgentReady")
    assert first.total == good.total
    assert first.lastHeartbeatTime is not None

    second = pub.compute()
    assert ready(second) == ("False", "LibvirtUnreachable")
    assert "Connection reset by peer" in ready_condition(second).message

    # Back: the next failure is again a single one.
    host.down = False
    assert ready(pub.compute()) == ("True", "AgentReady")
    host.down = True
    assert ready(pub.compute()) == ("True", "AgentReady")


def test_a_host_never_read_is_reported_unreachable_at_once() -> None:
    # Nothing to stand in for the figures: the first beat says what it found.
    host = FlakyHost()
    host.down = True
    assert ready(publisher(host).compute()) == ("False", "LibvirtUnreachable")


def test_the_host_boot_time_is_the_kernels(tmp_path: pathlib.Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nintr 5\nbtime 1764795845\nprocesses 9\n")
    assert capacity.boot_time(str(stat)) == dt.datetime(2025, 12, 3, 21, 4, 5, tzinfo=dt.UTC)
    stat.write_text("cpu  1 2 3\n")
    assert capacity.boot_time(str(stat)) is None
    assert capacity.boot_time(str(tmp_path / "none")) is None
    published = publisher(FlakyHost()).compute().bootTime
    assert published is not None and published < dt.datetime.now(dt.UTC)
