"""bench_scheduler at a tiny size: it binds every pending Server once and prints its table, and
it fails when a Server was not bound or the bound Servers' claims do not add up."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

import bench_scheduler


def test_a_tiny_pass_binds_every_pending_server_once() -> None:
    row = bench_scheduler.one_size(hosts=5, bound=12, pending=7)
    assert row["writes"] == 7
    assert row["events"] == 7
    assert row["first_sync_servers"] == 12
    assert row["next_sync_servers"] == 1  # after one change, only that Server is folded again
    assert row["pass_cpu_s"] > 0


def test_a_lost_binding_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Lossy(bench_scheduler.Recorder):
        def apply_status(self, ref: Any, status: Any, **kw: Any) -> dict[str, Any]:
            if ref.name == "p000003":
                return {}  # the write "happened" but recorded nothing: as if lost
            return super().apply_status(ref, status, **kw)

    monkeypatch.setattr(bench_scheduler, "Recorder", Lossy)
    with pytest.raises(bench_scheduler.Failure, match="not bound exactly once"):
        bench_scheduler.one_size(hosts=3, bound=0, pending=5)


def test_the_program_prints_its_table() -> None:
    out = subprocess.run(
        [sys.executable, bench_scheduler.__file__, "--hosts", "4", "--pending", "6",
         "--bound", "0", "--bound", "20"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["4"]]
    assert [r[1] for r in rows] == ["0", "20"], out.stdout
