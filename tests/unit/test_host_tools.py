"""The agent's host programs: found on the search path or named with their package, and all
of them installed by the image's Dockerfile (what the chart's agent pods run)."""

from __future__ import annotations

import pathlib
import re

import pytest

from kubenova_agent import hosttools, main
from kubenova_devenv import paths


def _bin(folder: pathlib.Path, *names: str) -> str:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_each_missing_program_is_named_with_its_package(tmp_path: pathlib.Path) -> None:
    path = _bin(tmp_path / "bin", "prlimit", "ip")
    lacking = hosttools.missing(networking=False, path=path)
    assert [t.program for t in lacking] == ["qemu-img"]
    assert "qemu-img (Debian package qemu-utils" in hosttools.describe(lacking)
    networked = {t.program for t in hosttools.missing(networking=True, path=path)}
    assert networked == {"qemu-img", "bridge", "nft", "sysctl", "dnsmasq", "nsenter"}
    everything = _bin(tmp_path / "bin", *(t.program for t in hosttools.REQUIRED))
    assert hosttools.missing(networking=True, path=everything) == []


def test_the_agent_refuses_to_start_without_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(hosttools, "SEARCH_PATH", str(empty))
    monkeypatch.setenv("PATH", str(empty))
    rc = main.main(["--host-name", "h1", "--libvirt-uri", "test:///default"])
    assert rc == 2
    assert "missing host programs: qemu-img (Debian package qemu-utils" in caplog.text


def test_the_image_installs_every_program_the_agent_runs() -> None:
    """The final stage of the Dockerfile (the image the agent pods run) installs each package
    of :data:`hosttools.REQUIRED`."""
    dockerfile = (paths.REPO / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    install = re.search(r"apt-get install[^&]*", final)
    assert install is not None
    packages = set(install.group(0).replace("\\", " ").split())
    needed = {t.package for t in hosttools.REQUIRED}
    assert needed <= packages, f"the image lacks {sorted(needed - packages)}"
