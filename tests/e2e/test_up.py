"""``kubenova up`` as a user runs it: in the background (where SIGINT arrives ignored), stopped
by a signal, or losing a component. Whatever happens, nothing it started stays running."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.libvirtd

KUBENOVA = pathlib.Path(sys.executable).parent / "kubenova"
OPENSTACK = pathlib.Path(sys.executable).parent / "openstack"


class Up:
    """A ``kubenova up`` process with its output in a file."""

    running: list[Up] = []

    def __init__(self, workdir: pathlib.Path, *args: str, background: bool = True) -> None:
        self.workdir = workdir
        self.out = workdir.parent / f"{workdir.name}.out"

        def as_background_job() -> None:
            # What a non-interactive shell does for `cmd &`: SIGINT (and SIGQUIT) ignored.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)

        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(KUBENOVA), "up", "--workdir", str(workdir), "--keep", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=as_background_job if background else None,  # noqa: PLW1509
                start_new_session=True,
            )
        Up.running.append(self)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 180) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"kubenova up exited early ({self.proc.returncode}):\n{self.text()}")
            return text in self.text()

        eventually(seen, timeout, 0.3, f"{text!r} from kubenova up")

    def started(self) -> dict[str, int]:
        """What it runs now: every descendant process and every guest, by PID."""
        pids = {f"pid {pid}": pid for pid in descendants(self.proc.pid)}
        for pid_file in self.workdir.glob("host-*/run/qemu/*.pid"):
            pids[f"guest {pid_file.stem}"] = int(pid_file.read_text())
        return pids


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def up_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    yield tmp_path / "up"
    for up in Up.running:  # a failed test must not leave a stack behind
        if up.proc.poll() is None:
            up.proc.terminate()
            up.proc.wait(timeout=90)
    Up.running.clear()


def assert_all_stopped(started: dict[str, int], timeout: float = 30) -> None:
    eventually(
        lambda: not [name for name, pid in started.items() if alive(pid)],
        timeout,
        0.2,
        "every process kubenova up started to be gone: "
        + ", ".join(f"{n}" for n, p in started.items() if alive(p)),
    )


def test_sigint_in_the_background_stops_everything_guests_included(up_dir: pathlib.Path) -> None:
    up = Up(up_dir)
    up.wait_for("Ctrl-C stops everything")
    started = up.started()
    assert any(name.startswith("guest ") for name in started), started
    assert len(started) >= 6, started  # etcd, apiserver, libvirtd (+virtlogd), controller, agent
    t0 = time.monotonic()
    up.proc.send_signal(signal.SIGINT)  # ignored on entry, as in a background job
    assert up.proc.wait(timeout=60) == 0, up.text()
    took = time.monotonic() - t0
    assert_all_stopped(started)
    assert "SIGINT: stopping" in up.text()
    assert took < 45, f"stopping took {took:.1f}s"


def network_namespaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {n["name"] for n in json.loads(out.stdout or "[]")}


def test_sigterm_stops_everything(up_dir: pathlib.Path) -> None:
    """Also: the example server is on the example's default Network, with the address its
    DHCP gave on the guest's console, in its status and in ``openstack server list``; the
    host's network namespace goes with the rest."""
    before = network_namespaces()
    up = Up(up_dir, background=False)
    up.wait_for("Ctrl-C stops everything")
    text = up.text()
    got = re.search(r"kubenova-net eth0 (10\.0\.0\.\d+)/24 mac=", text)
    assert got is not None, text
    assert re.search(rf"web-1 .*{re.escape(got.group(1))}", text), "the Address column"
    # The printed openrc works as it is: the openstack CLI sees the example server.
    rc = up_dir / "openrc"
    assert f". {rc}" in text
    listing = subprocess.run(
        ["bash", "-c",
         f". {rc} && {OPENSTACK} server list -f value -c Name -c Status -c Networks"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("OS_")},
    )  # fmt: skip
    assert listing.stdout.split(maxsplit=2)[:2] == ["web-1", "ACTIVE"], listing.stderr
    assert "private" in listing.stdout and got.group(1) in listing.stdout, listing.stdout
    assert network_namespaces() > before, "the host has a network namespace of its own"
    started = up.started()
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=60) == 128 + signal.SIGTERM, up.text()
    assert_all_stopped(started)
    assert network_namespaces() <= before, network_namespaces() - before


def test_a_component_that_exits_is_named_with_its_log_and_everything_stops(
    up_dir: pathlib.Path,
) -> None:
    up = Up(up_dir)
    up.wait_for("Ctrl-C stops everything")
    started = up.started()
    agent = next(
        pid
        for pid in descendants(up.proc.pid)
        if b"kubenova_agent.main" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    t0 = time.monotonic()
    os.kill(agent, signal.SIGKILL)
    code = up.proc.wait(timeout=60)
    took = time.monotonic() - t0
    text = up.text()
    assert code == 1, text
    assert "agent-host-a exited with status -9" in text, text
    assert "agent for host host-a started" in text, "the end of the agent's log is shown"
    assert_all_stopped(started)
    assert took < 45, f"noticing and stopping took {took:.1f}s"


def test_a_broken_agent_fails_fast_with_its_error(
    up_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent dying at import (the missing-dependency failure of a fresh machine) is
    reported at once with its traceback, not after a long wait for the Server."""
    shim = up_dir.parent / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pycdlib':\n"
        "            raise ModuleNotFoundError(\"No module named 'pycdlib'\")\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(shim))
    t0 = time.monotonic()
    up = Up(up_dir)
    code = up.proc.wait(timeout=120)
    text = up.text()
    assert code == 1, text
    assert "agent-host-a exited with status 1" in text, text
    assert "ModuleNotFoundError: No module named 'pycdlib'" in text, text
    assert "is Ready" not in text
    assert time.monotonic() - t0 < 90
