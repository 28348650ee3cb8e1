"""A host's heartbeat is its Lease (as a kubelet's is in ``kube-node-lease``): the agent renews
``hypervisor-<host>`` every beat and writes its Hypervisor status only when a figure in it
changes, so an idle host costs the API server one small update a beat instead of its whole
status. An agent that cannot renew its Lease heartbeats in its status, as before Leases, and
the controller counts whichever is later."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubenova_api import constants
from kubenova_devenv import stack
from tests.conftest import condition, eventually

pytestmark = pytest.mark.timeout(180)

WITH_LEASE, WITHOUT = "hb-lease", "hb-nolease"


@pytest.fixture(scope="module")
def bed(api: stack.Stack) -> Iterator[stack.Stack]:
    api.start_controller()
    yield api
    api.stop_agents(WITH_LEASE, WITHOUT)
    assert api.controller is not None
    api.controller.stop()
    api.kubectl("delete", "hypervisor", WITH_LEASE, WITHOUT, "--ignore-not-found", check=False)


def _hv(api: stack.Stack, name: str) -> dict[str, Any]:
    return api.get("hypervisor", name) or {}


def _lease(api: stack.Stack, host: str) -> dict[str, Any] | None:
    return api.get("lease", constants.heartbeat_lease(host), constants.HEARTBEAT_NAMESPACE)


def _up(api: stack.Stack, name: str) -> bool:
    return condition(_hv(api, name), "Up").get("status") == "True"


def _beat(api: stack.Stack) -> float:
    """Seconds between two heartbeats of the bed's agents (a beat, then the 2 s spacing)."""
    return api.heartbeat_seconds + min(2.0, api.heartbeat_seconds)


def test_an_idle_host_renews_its_lease_and_leaves_its_status_alone(bed: stack.Stack) -> None:
    bed.start_sim_agent(WITH_LEASE, cpus=2, memory_mib=1024)
    eventually(lambda: _up(bed, WITH_LEASE), 60, what=f"{WITH_LEASE} Up")
    lease = _lease(bed, WITH_LEASE)
    assert lease is not None
    assert lease["metadata"]["labels"][constants.HEARTBEAT_LEASE_LABEL] == WITH_LEASE
    assert lease["spec"]["holderIdentity"] == WITH_LEASE
    assert lease["spec"]["leaseDurationSeconds"] >= bed.heartbeat_seconds
    version = _hv(bed, WITH_LEASE)["metadata"]["resourceVersion"]
    renewals: set[object] = set()  # (kubectl's YAML, read as timestamps)
    deadline = time.monotonic() + 3.5 * _beat(bed)
    while time.monotonic() < deadline:
        now = _lease(bed, WITH_LEASE)
        assert now is not None
        renewals.add(now["spec"]["renewTime"])
        time.sleep(0.3)
    assert len(renewals) >= 3, f"the Lease was renewed {len(renewals)} times: {sorted(renewals)}"
    hv = _hv(bed, WITH_LEASE)
    assert hv["metadata"]["resourceVersion"] == version, (
        "the Hypervisor was written although nothing in it changed: "
        + str(hv["status"].get("lastHeartbeatTime"))
    )
    assert _up(bed, WITH_LEASE), "the Lease alone keeps the host up"


def test_an_agent_that_cannot_renew_its_lease_heartbeats_in_its_status(bed: stack.Stack) -> None:
    bed.start_sim_agent(
        WITHOUT, cpus=2, memory_mib=1024, extra_args=("--heartbeat-namespace", "no-such-namespace")
    )
    eventually(lambda: _up(bed, WITHOUT), 60, what=f"{WITHOUT} Up")

    def stamp() -> dt.datetime:
        raw = _hv(bed, WITHOUT)["status"]["lastHeartbeatTime"]
        if isinstance(raw, dt.datetime):
            return raw
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))

    first = stamp()
    eventually(lambda: stamp() > first, 3 * _beat(bed), what="a newer status heartbeat")
    assert _lease(bed, WITHOUT) is None
    assert _up(bed, WITHOUT)
    log = (bed.workdir / f"agent-{WITHOUT}.log").read_text()
    assert "cannot renew the heartbeat Lease no-such-namespace/hypervisor-hb-nolease" in log, log[
        -2000:
    ]
