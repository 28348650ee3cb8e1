"""The agent's heartbeat Lease: what a renewal's failure means for the heartbeat. Refused for
load (429, 5xx, no answer) is "busy": try again next beat, and never write the larger
Hypervisor status instead. No namespace or no permission is "unavailable": the status
carries the heartbeat."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubenova_agent import heartbeat
from kubenova_agent.heartbeat import Renewal


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()


class _Leases:
    """The three Lease calls, answering from a script of outcomes."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []
        self.stored: dict[str, Any] | None = None

    def _next(self, call: str, body: Any = None) -> _Response:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        if body is not None:
            self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "7"}}
        if self.stored is None:
            raise ApiException(status=404, reason="Not Found")
        return _Response(self.stored)

    def read_namespaced_lease(self, *_: Any, **__: Any) -> _Response:
        return self._next("read")

    def create_namespaced_lease(self, _ns: str, body: Any, **__: Any) -> _Response:
        return self._next("create", body)

    def replace_namespaced_lease(self, _name: str, _ns: str, body: Any, **__: Any) -> _Response:
        return self._next("replace", body)


def _lease(api: _Leases) -> heartbeat.HeartbeatLease:
    lease = heartbeat.HeartbeatLease(client.ApiClient(), "ns", "host-a", 40)
    lease._api = api  # type: ignore[assignment]
    return lease


def test_the_first_renewal_makes_the_lease_and_the_next_replace_it() -> None:
    api = _Leases()
    lease = _lease(api)
    assert lease.renew() is Renewal.renewed
    assert api.calls == ["read", "create"]
    assert api.stored is not None
    assert api.stored["metadata"]["labels"] == {"compute.kubenova.io/hypervisor": "host-a"}
    assert api.stored["spec"]["renewTime"].endswith("Z")
    assert len(api.stored["spec"]["renewTime"].split(".")[1]) == 7  # six digits and Z
    assert lease.renew() is Renewal.renewed
    assert api.calls[-1] == "replace"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ApiException(status=429, reason="Too Many Requests"), Renewal.busy),
        (ApiException(status=503, reason="Service Unavailable"), Renewal.busy),
        (TimeoutError("read timed out"), Renewal.busy),
        (ApiException(status=403, reason="Forbidden"), Renewal.unavailable),
        (ApiException(status=404, reason="namespaces not found"), Renewal.unavailable),
    ],
)
def test_a_failed_renewal_says_whether_the_status_must_carry_the_heartbeat(
    error: BaseException, outcome: Renewal
) -> None:
    api = _Leases()
    lease = _lease(api)
    assert lease.renew() is Renewal.renewed
    api.outcomes = [error]
    assert lease.renew() is outcome
    assert lease.renew() is Renewal.renewed, "and it recovers on the next beat"


def test_a_conflict_is_read_again_once() -> None:
    api = _Leases()
    lease = _lease(api)
    lease.renew()
    api.outcomes = [ApiException(status=409, reason="Conflict")]
    assert lease.renew() is Renewal.renewed
    assert api.calls[-3:] == ["replace", "read", "replace"]
