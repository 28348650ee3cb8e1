"""The figures of the network benchmark's echo stream (``netprobe.PingResult``): what counts
as lost and how the longest time without a reply is measured, on hand-made streams."""

from __future__ import annotations

import pytest

from kubenova_devenv import netprobe


def stream(count: int, unanswered: set[int], interval: float = 0.1) -> netprobe.PingResult:
    sent = tuple((seq, seq * interval) for seq in range(count))
    replies = tuple((seq, seq * interval + 0.01) for seq in range(count) if seq not in unanswered)
    return netprobe.PingResult(interval, sent, replies)


def test_a_stream_without_losses() -> None:
    result = stream(50, set())
    assert result.sent_between(1.0, 4.0) == 31
    assert result.lost_between(1.0, 4.0) == 0
    assert result.longest_gap(1.0, 4.0) == pytest.approx(0.1)


def test_losses_are_counted_and_the_gap_spans_them() -> None:
    result = stream(50, {20, 21, 22, 23, 40})
    assert result.lost_between(1.0, 4.5) == 5
    # replies to 19 (1.91) and 24 (2.41): half a second without a reply
    assert result.longest_gap(1.0, 4.5) == pytest.approx(0.5)
    assert result.lost_between(3.0, 3.9) == 0, "only requests sent in the window count"


def test_a_stream_that_stopped_answering_shows_its_whole_silence() -> None:
    result = stream(50, set(range(30, 50)))
    assert result.lost_between(2.0, 4.9) == 20
    assert result.longest_gap(2.0, 4.9) == pytest.approx(4.9 - 2.91)
