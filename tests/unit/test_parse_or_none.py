"""Objects arriving from a watch that do not fit their model are skipped with a log line that
names them, not raised: one bad object must not stop a cache or the controller's watch."""

from __future__ import annotations

import logging

import pytest

from kubenova_api.resources import Server


def test_a_body_that_does_not_fit_is_named_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good = {
        "metadata": {"name": "ok", "namespace": "ns"},
        "spec": {"flavorRef": "m1", "imageRef": "i"},
    }
    parsed = Server.parse_or_none(good)
    assert parsed is not None and parsed.name == "ok"
    bad = {
        "metadata": {"name": "bad", "namespace": "ns"},
        "spec": {"flavorRef": ["not", "a", "name"]},
    }
    with caplog.at_level(logging.ERROR):
        assert Server.parse_or_none(bad) is None
    assert "ignoring Server ns/bad that does not match its model" in caplog.text
