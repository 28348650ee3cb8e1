"""The liveness and readiness endpoint both programs serve to the kubelet's probes.

``GET /healthz`` answers 200 while the process is alive and its ``alive`` check holds (the
controller's event loop still turns; a standby waiting for the Lease is alive too);
``GET /readyz`` answers 200 once its ``ready`` check holds (the agent's informer has listed
its Servers). Served by the standard library from a daemon thread, so that a busy or stuck
event loop or worker cannot hide behind a probe served by itself.

The address is each program's ``health_address`` setting (``--health-address``,
``$KUBENOVA_HEALTH_ADDRESS``), e.g. ``:8081``; without one nothing listens (the local test bed
runs many agents).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

Check = Callable[[], bool]


class Heartbeat:
    """Beaten by the loop it watches; ``fresh`` says whether it beat within ``max_age``."""

    def __init__(self, max_age: float = 30.0) -> None:
        self.max_age = max_age
        self._at = time.monotonic()

    def beat(self) -> None:
        self._at = time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self._at < self.max_age


class Server:
    """``/healthz`` and ``/readyz`` on ``address`` (host:port) from a daemon thread."""

    def __init__(self, address: str, alive: Check, ready: Check) -> None:
        host, _, port = address.rpartition(":")
        checks = {"/healthz": alive, "/readyz": ready}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?")[0])
                if check is None:
                    self.send_error(404)
                    return
                try:
                    ok = bool(check())
                except Exception:
                    ok = False
                body = b"ok\n" if ok else b"not ok\n"
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the kubelet probes every few seconds: not worth a log line each

        self._httpd = http.server.ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(address: str | None, alive: Check, ready: Check) -> Server | None:
    """Start the endpoint if an address is given."""
    if not address:
        return None
    return Server(address, alive, ready).start()
