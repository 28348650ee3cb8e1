"""Reading and deleting a link are idempotent: a device that goes away between the look and
the read or the delete (a guest's tap, removed by libvirt when the guest stops) is no device,
while a device that is still there after a failed read or delete is an error."""

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


def _reads(monkeypatch: pytest.MonkeyPatch, there_after: bool) -> None:
    def json_of(*argv: str, **_: Any) -> Any:
        raise cmd.CommandFailed(list(argv), 1, 'Device "tapx" does not exist.')

    monkeypatch.setattr(cmd, "json_of", json_of)
    monkeypatch.setattr(cmd, "ok", lambda *argv, **_: there_after)


def test_a_link_gone_while_it_is_read_is_no_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI run on 21ec369 failed a teardown: ``ip link show`` found the tap, the guest
    stopped, and the ``ip -j -d link show`` right after said it did not exist."""
    _reads(monkeypatch, there_after=False)
    assert links.get("tapx") is None


def test_a_link_that_is_there_but_cannot_be_read_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _reads(monkeypatch, there_after=True)
    with pytest.raises(cmd.CommandFailed):
        links.get("tapx")
