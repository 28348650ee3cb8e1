"""The benchmarks on real libvirtd + QEMU keep running: each at its smallest size (one run)
exits 0 and prints its table, after checking every timed action on the object and in libvirt.
Each starts its own test bed, as a person running it would (not the session's)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(360), pytest.mark.libvirtd]

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def run_bench(tmp: pathlib.Path, script: str, *args: str, timeout: float = 330) -> list[str]:
    """Run a benchmark as a person does, its work folder (every component's log) in ``tmp``
    (short: a libvirtd socket path must stay under 108 characters); the lines it printed."""
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert "BENCHMARK FAILED" not in out.stderr
    return out.stdout.splitlines()


def test_bench_boot(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = run_bench(tmp_path_factory.mktemp("b"), "bench_boot.py", "--runs", "1")
    header = lines.index(next(line for line in lines if line.startswith("run ")))
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :]}
    assert set(rows) == {"cold", "warm", "median"}, lines
    for label, figures in rows.items():  # apply->ACTIVE, virsh, ratio, console, virsh, ratio
        assert all(float(v) > 0 for v in figures[:6]), (label, figures)


def test_bench_lifecycle(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = run_bench(tmp_path_factory.mktemp("b"), "bench_lifecycle.py", "--runs", "1")
    figures = json.loads(lines[-1])
    actions = ["pause", "unpause", "suspend", "resume", "reboot-hard", "reboot-soft"]
    assert list(figures) == actions
    for action in actions:
        assert figures[action]["kubenova"] > 0 and figures[action]["libvirt"] > 0, figures
        assert any(line.split()[:1] == [action] for line in lines), lines


def test_bench_migration(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = run_bench(tmp_path_factory.mktemp("b"), "bench_migration.py", "--runs", "1")
    figures = json.loads(lines[-1])
    assert figures["mode"] == "shared storage" and figures["runs"] == 1
    assert figures["kubenova_total_s"] > 0 and figures["virsh_total_s"] > 0, figures
    assert figures["kubenova_downtime_ms"] >= 0 and figures["virsh_downtime_ms"] >= 0, figures
    assert any(line.startswith("total (s)") for line in lines), lines


@pytest.mark.timeout(600)
def test_bench_network(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = run_bench(tmp_path_factory.mktemp("b"), "bench_network.py", "--runs", "1", timeout=570)
    figures = json.loads(lines[-1])
    assert figures["runs"] == 1, figures
    assert figures["kubenova_first_reply_s"] > 0 and figures["virsh_first_reply_s"] > 0, figures
    assert figures["kubenova_migration_s"] > 0 and figures["virsh_migration_s"] > 0, figures
    for side in ("kubenova", "virsh"):
        assert figures[f"{side}_lost"] >= 0 and figures[f"{side}_longest_gap_ms"] > 0, figures
    assert any(line.startswith("boot -> first TCP reply") for line in lines), lines
