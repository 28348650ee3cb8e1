"""Deleting a link is idempotent: a device that goes away between the look and the delete
(a guest's tap, removed by libvirt when the guest stops) is what was asked for, while a
device that is still there after a failed delete is an error."""

from __future__ import annotations

from typing import Any

import pytest

from kubenova_agent.network import cmd, links


def _fake(monkeypatch: pytest.MonkeyPatch, present: list[bool]) -> list[tuple[str, ...]]:
    ran: list[tuple[str, ...]] = []

    def get(name: str, netns: str | None = None) -> dict[str, Any] | None:
        return {"ifname": name} if present.pop(0) else None

    def run(*argv: str, **_: Any) -> str:
        ran.append(argv)
        raise cmd.CommandFailed(list(argv), 1, 'Cannot find device "tapx"')

    monkeypatch.setattr(links, "get", get)
    monkeypatch.setattr(cmd, "run", run)
    return ran


def test_a_link_gone_between_the_look_and_the_delete_is_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = _fake(monkeypatch, [True, False])
    assert links.delete("tapx") is True
    assert ran == [("ip", "link", "del", "dev", "tapx")]


def test_a_link_still_there_after_a_failed_delete_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake(monkeypatch, [True, True])
    with pytest.raises(cmd.CommandFailed):
        links.delete("tapx")


def test_no_link_nothing_to_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _fake(monkeypatch, [False])
    assert links.delete("tapx") is False
    assert ran == []
