"""A full disk while caching an image: a typed, transient ``DiskFull`` error, no partial file
left behind, and a back-off before the next try. The cache lives on a real 2 MiB tmpfs, mounted
in a private mount namespace of a child process (gone with it: nothing to clean up)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.unit.recording_http import RecordingServer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

CHILD = textwrap.dedent(
    """
    import ipaddress, json, os, pathlib, subprocess, sys
    from kubenova_agent import images
    from kubenova_api.imagesource import SourcePolicy

    folder = pathlib.Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    policy = SourcePolicy(
        allowed_ports=None, permitted_networks=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    cache = images.ImageCache(str(folder), images.ImageSettings(sources=policy, min_free_bytes=0))
    out = []
    for url in sys.argv[2:]:
        for attempt in range(2):
            try:
                cache.ensure(url, "0" * 64, "raw")
                out.append({"ok": True})
            except images.ImageError as exc:
                out.append({
                    "reason": exc.reason, "transient": exc.transient,
                    "retry_after": exc.retry_after, "message": str(exc),
                    "left": sorted(p.name for p in folder.iterdir()),
                })
    print(json.dumps(out))
    """
)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer("127.0.0.1")
    srv.serve("/announced-4m", b"\1" * (4 << 20))
    yield srv
    srv.stop()


def test_a_full_disk_is_a_typed_transient_error_that_leaves_nothing(
    server: RecordingServer, tmp_path: pathlib.Path
) -> None:
    announced = server.url("/announced-4m")  # refused up front: Content-Length > free space
    streamed = server.url(f"/unannounced?size={4 << 20}")  # ENOSPC while writing
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "cache"),
            announced,
            streamed,
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    first, held, second, held_too = json.loads(out.stdout.splitlines()[-1])
    for result in (first, second):
        assert result["reason"] == "DiskFull" and result["transient"], result
        assert result["left"] == [], result  # the partial file was removed
        assert result["retry_after"] == 10.0
    assert "MiB free" in first["message"]
    assert "No space left on device" in second["message"]
    for result in (held, held_too):
        assert result["reason"] == "DiskFull" and 0 < result["retry_after"] <= 10.0
    # each URL was asked for once: the immediate second try was held back by the back-off
    assert [s.path for s in server.seen] == ["/announced-4m", f"/unannounced?size={4 << 20}"]
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
