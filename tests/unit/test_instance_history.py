"""Nova's instance actions from a Server's Events (kubenova_openstack.compute.history): a
Started Event is Nova's ``start`` only when the guest was stopped before — the agent records
none for the first boot, and the one earlier versions recorded is part of ``create``."""

from __future__ import annotations

from typing import Any

from kubenova_openstack.compute import history


def _events(*reasons: str) -> list[dict[str, Any]]:
    return [
        {
            "reason": reason,
            "type": "Normal",
            "lastTimestamp": f"2026-12-03T09:00:{i:02d}Z",
            "metadata": {"name": f"web.{i:02d}", "uid": f"uid-{i}"},
        }
        for i, reason in enumerate(reasons)
    ]


def actions(*reasons: str) -> list[str]:
    return [a["action"] for a in history.actions_of(_events(*reasons))]


def test_a_new_server_is_created_and_a_later_start_is_a_start() -> None:
    assert actions("Scheduled", "ImageFetched") == ["create"]
    assert actions("Scheduled", "Stopped", "Started") == ["create", "stop", "start"]


def test_the_first_boot_event_of_an_earlier_version_is_part_of_create() -> None:
    assert actions("Scheduled", "Started") == ["create"]
    assert actions("Scheduled", "Started", "Stopped", "Started") == ["create", "stop", "start"]


def test_events_are_read_oldest_first_whatever_order_they_are_listed_in() -> None:
    events = _events("Scheduled", "Stopped", "Started")
    assert [a["action"] for a in history.actions_of(list(reversed(events)))] == [
        "create",
        "stop",
        "start",
    ]
