"""How a list-then-watch reports its failures: a warning while they are few and the first
LIST is in, an error before it (saying what waits for it) or when they go on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubenova_api import listwatch


class _Watch(listwatch.ListWatch):
    UNSYNCED = "nothing is scheduled until they are read"

    def list_objects(self, **page: Any) -> dict[str, Any]:
        raise AssertionError("not called")

    def watch_call(self) -> listwatch.WatchCall:
        raise AssertionError("not called")

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        raise AssertionError("not called")

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        raise AssertionError("not called")


def _logged(caplog: pytest.LogCaptureFixture, lw: listwatch.ListWatch, failures: int) -> Any:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=listwatch.__name__):
        lw.failed(ApiException(status=429, reason="Too Many Requests"), 1.5, failures)
    (record,) = caplog.records
    return record


def test_before_the_first_list_a_failure_is_an_error_naming_what_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lw = _Watch("widgets")
    record = _logged(caplog, lw, 1)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "cannot list the widgets (429 Too Many Requests); again in 1.5s: "
        "nothing is scheduled until they are read"
    )


def test_once_listed_a_few_failures_are_warnings_and_more_are_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lw = _Watch("widgets")
    lw.synced.set()
    record = _logged(caplog, lw, 2)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "cannot watch the widgets (429 Too Many Requests); again in 1.5s"
    assert _logged(caplog, lw, 3).levelno == logging.ERROR


def test_an_error_that_is_not_the_api_servers_is_named_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lw = _Watch("widgets")
    lw.synced.set()
    lw.UNSYNCED = ""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=listwatch.__name__):
        lw.failed(ConnectionResetError("peer gone"), 0.2, 1)
    assert caplog.records[0].getMessage() == "cannot watch the widgets (peer gone); again in 0.2s"
