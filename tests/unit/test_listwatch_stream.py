"""How a list-then-watch reads a watch's streamed answer: one JSON line per event, however
the chunks cut it; an ERROR event is raised as the API error it carries; a watch read to its
end leaves its connection for the next request, one left mid-stream is closed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubenova_api import listwatch
from tests.unit.watch_answer import StreamedAnswer


def _line(kind: str, name: str, rv: str) -> bytes:
    obj = {"metadata": {"name": name, "resourceVersion": rv}, "data": {"x": "é\n" * 5}}
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class _Watch(listwatch.ListWatch):
    def __init__(self, body: bytes, cut: int, stop_after: int | None = None) -> None:
        super().__init__("widgets")
        self.response = StreamedAnswer(body, cut)
        self.seen: list[tuple[str, str]] = []
        self.stop_after = stop_after

    def list_objects(self, **page: Any) -> dict[str, Any]:
        raise AssertionError("not called")

    def watch_call(self) -> listwatch.WatchCall:
        return (lambda **_: self.response), (), {}

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        raise AssertionError("not called")

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        self.seen.append((kind, obj["metadata"]["name"]))
        if self.stop_after is not None and len(self.seen) == self.stop_after:
            self.stop()


BODY = (
    _line("ADDED", "a", "5")
    + b"\n"  # an empty line between events is nothing
    + json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}).encode()
    + b"\n"
    + _line("MODIFIED", "a", "8")
    + _line("DELETED", "b", "9").rstrip(b"\n")  # the last line may come without its newline
)


@pytest.mark.parametrize("cut", [1, 3, 64, len(BODY)])
def test_events_are_read_however_the_chunks_cut_them(cut: int) -> None:
    w = _Watch(BODY, cut)
    w._follow("1")
    assert w.seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert w.resource_version == "9"
    assert w.response.released and not w.response.closed


def test_an_error_event_is_raised_and_its_connection_closed() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    w = _Watch(_line("ADDED", "a", "5") + json.dumps(gone).encode() + b"\n", 10)
    with pytest.raises(ApiException) as raised:
        w._follow("1")
    assert (raised.value.status, raised.value.reason) == (410, "too old")
    assert w.seen == [("ADDED", "a")]
    assert w.resource_version == "5", "a resumed watch starts after the last event read"
    assert w.response.closed


def test_a_watch_stopped_mid_stream_is_closed() -> None:
    w = _Watch(BODY, 16, stop_after=1)
    w._follow("1")
    assert w.seen == [("ADDED", "a")]
    assert w.response.closed and w.response.released
