"""Events are posted off the caller's path, in order, best effort and bounded
(kubenova_api.kube.EventRecorder)."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client

from kubenova_api.kube import EventRecorder


class _Core:
    """Stands in for CoreV1Api.create_namespaced_event: records, can be held or fail."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []
        self.threads: set[str] = set()
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail = {"Broken"}

    def create_namespaced_event(self, namespace: str, body: Any, **_: Any) -> None:
        self.entered.set()
        self.hold.wait(10)
        self.threads.add(threading.current_thread().name)
        if body.reason in self.fail:
            raise client.ApiException(status=422, reason="Unprocessable Entity")
        self.posted.append((namespace, body.reason))


def _event(reason: str) -> client.CoreV1Event:
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"x.{reason}"),
        involved_object=client.V1ObjectReference(name="x"),
        reason=reason,
    )


def test_events_are_posted_in_order_by_the_recorders_thread() -> None:
    core = _Core()
    recorder = EventRecorder(core)  # type: ignore[arg-type]
    for reason in ("Scheduled", "Broken", "Started", "Stopped"):
        recorder.record("ns", _event(reason))
    assert recorder.flush(10)
    # The refused one is logged and dropped; those after it still go, in order.
    assert core.posted == [("ns", "Scheduled"), ("ns", "Started"), ("ns", "Stopped")]
    assert core.threads == {"events"}


def test_a_caller_is_not_held_up_by_a_slow_api_server() -> None:
    core = _Core()
    core.hold.clear()  # the API server does not answer for now
    recorder = EventRecorder(core)  # type: ignore[arg-type]
    recorder.record("ns", _event("Scheduled"))  # returns at once
    assert not recorder.flush(0.2)
    core.hold.set()
    assert recorder.flush(10)
    assert core.posted == [("ns", "Scheduled")]


def test_when_the_queue_is_full_new_events_are_dropped_and_counted() -> None:
    core = _Core()
    core.hold.clear()
    recorder = EventRecorder(core, capacity=3)  # type: ignore[arg-type]
    recorder.record("ns", _event("E0"))
    assert core.entered.wait(10)  # E0 is being posted: the queue is empty again
    for i in range(1, 10):
        recorder.record("ns", _event(f"E{i}"))
    # One is being posted (held), three wait; the other six are dropped.
    assert recorder.dropped == 6
    core.hold.set()
    assert recorder.flush(10)
    assert [reason for _, reason in core.posted] == ["E0", "E1", "E2", "E3"]


def test_flush_without_any_event_returns_at_once() -> None:
    assert EventRecorder(_Core()).flush(0.01)  # type: ignore[arg-type]
