"""Small network helpers for processes that listen on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Fatal(RuntimeError):
    """Raised by a check of :func:`wait_until` when waiting longer cannot help."""


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    """Poll ``check`` until it is true; raise ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Fatal:
            raise
        except Exception as exc:
            last = exc
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")
