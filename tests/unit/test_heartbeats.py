"""The controller's view of the heartbeat Leases: renewals recorded per host, bookmarks and
foreign Leases skipped, and a host coming back (its last renewal older than the grace period)
wakes the pass."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes import client

from kubenova_api import constants
from kubenova_operator import heartbeats
from tests.unit.watch_answer import StreamedAnswer


def _lease(host: str, age: float, name: str | None = None, rv: str = "1") -> client.V1Lease:
    """A Lease renewed ``age`` seconds before now (now when it is made: a module-level time
    would be as old as the test session when this runs)."""
    now = dt.datetime.now(dt.UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(
            name=name or constants.heartbeat_lease(host),
            labels={constants.HEARTBEAT_LEASE_LABEL: host},
            resource_version=rv,
        ),
        spec=client.V1LeaseSpec(renew_time=now - dt.timedelta(seconds=age)),
    )


def _event(kind: str, lease: client.V1Lease) -> dict[str, Any]:
    return {"type": kind, "object": client.ApiClient().sanitize_for_serialization(lease)}


def _watching(
    monkeypatch: pytest.MonkeyPatch, beats: heartbeats.Heartbeats, events: list[dict[str, Any]]
) -> list[StreamedAnswer]:
    """Every watch ``beats`` makes answers ``events`` (as they are then); the answers made."""
    made: list[StreamedAnswer] = []

    def watch(**kwargs: Any) -> StreamedAnswer:
        assert kwargs["watch"] is True and kwargs["_preload_content"] is False
        made.append(StreamedAnswer.of(events))
        return made[-1]

    monkeypatch.setattr(beats, "watch_call", lambda: (watch, (), {}))
    return made


def test_renewals_bookmarks_and_a_host_coming_back(monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[bool] = []
    beats = heartbeats.Heartbeats(
        client.ApiClient(), "ns", 60.0, on_back=lambda: woken.append(True)
    )
    beats.synced.set()
    events = [
        _event("ADDED", _lease("a", 1, rv="5")),
        # A BOOKMARK's object is a Lease with only its version: only that counts.
        {"type": "BOOKMARK", "object": {"kind": "Lease", "metadata": {"resourceVersion": "9"}}},
        _event("MODIFIED", _lease("b", 300, rv="10")),  # stale: b is down
        _event("MODIFIED", _lease("c", 1, name="someone-else", rv="11")),  # not a heartbeat
    ]
    answers = _watching(monkeypatch, beats, events)
    beats._follow("1")
    assert beats.resource_version == "11"
    renewed = beats.renewed()
    assert set(renewed) == {"a", "b"}
    assert woken == [True], "a new host woke the pass; a stale renewal did not"
    # b renews again: it is coming back, which wakes the pass.
    events[:] = [_event("MODIFIED", _lease("b", 0, rv="12"))]
    beats._follow("11")
    assert beats.resource_version == "12"
    assert woken == [True, True]
    assert beats.renewed()["b"] > renewed["b"]
    events[:] = [_event("DELETED", _lease("a", 0, rv="13"))]
    beats._follow("12")
    assert set(beats.renewed()) == {"b"}
    assert all(a.released and not a.closed for a in answers), "read to the end: connection kept"
