"""Linux namespaces from the outside: a thread inside another network namespace, a loopback
port forwarded into one, and PIDs of another PID namespace.

The real node (``node``) lives in network and PID namespaces of its own; tests, helm and kubectl
run outside. A socket belongs to the network namespace of the thread that made it, and
``setns(CLONE_NEWNET)`` moves only the calling thread: so a server can listen inside the node
while this process stays outside, and a forwarder can accept outside and connect inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import socket
import threading
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(pid: int) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace of process ``pid``;
    sockets made meanwhile stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(target, _CLONE_NEWNET)
        try:
            yield
        finally:
            _setns(own, _CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


class Forwarder:
    """``127.0.0.1:<port>`` here, forwarded to ``host:port`` inside the network namespace of
    process ``pid`` (only ever to an address of that namespace)."""

    def __init__(self, pid: int, host: str, port: int) -> None:
        self._pid, self._target = pid, (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="forwarder", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _serve(self) -> None:
        with in_netns(self._pid):  # this thread connects inside; it accepts on the listener
            while True:
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    return  # stopped
                try:
                    upstream = socket.create_connection(self._target, timeout=5)
                except OSError:
                    conn.close()
                    continue
                upstream.settimeout(None)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Either side ending ends both (the other direction's thread then returns too).
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def descendants(*pids: int) -> list[int]:
    """``pids`` and every process below them (PIDs as seen here), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += children.get(p, [])
    return sorted(found)


def outer_pid(inner: int, member: int) -> int | None:
    """The PID here of the process whose PID is ``inner`` in the PID namespace that process
    ``member`` belongs to (pid files written inside a namespace hold inner PIDs)."""
    try:
        ns = os.readlink(f"/proc/{member}/ns/pid")
    except OSError:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(nspid.split()[-1]) == inner:
            return int(entry)
    return None


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
