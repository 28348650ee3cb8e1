"""A list-then-watch reads a LIST a page at a time: every page's items reach ``replace`` in
order, each page is asked for as the API server wants it (the version only on the first, the
continue token on the next), and a page is let go before the next is asked for."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubenova_api import listwatch


class _Page(dict[str, Any]):
    """A page, told apart by identity (a weak reference to it says when it is let go)."""


class _Paged(listwatch.ListWatch):
    """A LIST of ``total`` objects served ``limit`` at a time, like an API server; a page may be
    made to fail."""

    def __init__(self, total: int, fail_on_page: int | None = None) -> None:
        super().__init__("widgets")
        self.total = total
        self.fail_on_page = fail_on_page
        self.asked: list[dict[str, Any]] = []
        self.pages: list[weakref.ref[_Page]] = []
        self.kept: list[str] = ["old"]
        self.alive_when_asked: list[int] = []

    def list_objects(self, **page: Any) -> dict[str, Any]:
        self.alive_when_asked.append(sum(ref() is not None for ref in self.pages))
        self.asked.append(page)
        if len(self.asked) == self.fail_on_page:
            raise ApiException(status=410, reason="Gone: the continue token expired")
        start = int(page.get("_continue") or 0)
        end = min(start + page["limit"], self.total)
        listing = _Page(
            items=[{"metadata": {"name": f"w-{i}"}} for i in range(start, end)],
            metadata={"resourceVersion": "42"},
        )
        if end < self.total:
            listing["metadata"]["continue"] = str(end)
        self.pages.append(weakref.ref(listing))
        return listing

    def watch_call(self) -> listwatch.WatchCall:
        raise AssertionError("not called")

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        fresh = []
        for item in items:
            gc.collect()  # the pages read before are gone, not just unreferenced
            fresh.append(item["metadata"]["name"])
        self.kept = fresh

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        raise AssertionError("not called")


def test_a_list_is_read_a_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 4)
    lw = _Paged(10)
    assert lw._list("0") == "42"
    assert lw.kept == [f"w-{i}" for i in range(10)]
    assert lw.synced.is_set()
    assert lw.asked == [
        {"limit": 4, "resource_version": "0"},
        {"limit": 4, "_continue": "4"},
        {"limit": 4, "_continue": "8"},
    ]
    assert lw.alive_when_asked == [0, 0, 0], "a page was still held when the next was asked for"


def test_the_newest_is_asked_for_without_a_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 500)
    lw = _Paged(3)
    assert lw._list("") == "42"
    assert lw.asked == [{"limit": 500}]
    assert lw.kept == ["w-0", "w-1", "w-2"]


def test_a_list_not_older_than_a_version_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a limit and no match, a version would mean exactly that version."""
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 4)
    lw = _Paged(5)
    assert lw._list("1234") == "42"
    assert lw.asked == [
        {"limit": 4, "resource_version": "1234", "resource_version_match": "NotOlderThan"},
        {"limit": 4, "_continue": "4"},
    ]


def test_a_page_that_fails_keeps_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 4)
    lw = _Paged(10, fail_on_page=2)
    with pytest.raises(ApiException):
        lw._list("0")
    assert lw.kept == ["old"]
    assert not lw.synced.is_set()
