"""A local HTTP server that serves image files to the agents (as Glance or a web server would).

Paths under ``/slow/`` serve the same files in small pieces with pauses between them, so that a
test can act while an agent is still downloading (for example, kill it mid-spawn)."""

from __future__ import annotations

import functools
import http.server
import pathlib
import threading
import time
from typing import Any

SLOW_PREFIX = "/slow/"


class _Handler(http.server.SimpleHTTPRequestHandler):
    slow_seconds = 3.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith(SLOW_PREFIX):
            super().do_GET()
            return
        path = pathlib.Path(self.translate_path("/" + self.path[len(SLOW_PREFIX) :]))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        pieces = 20
        step = max(1, len(data) // pieces + 1)
        try:
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(self.slow_seconds / pieces)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed agent)


class ImageServer:
    """Serves ``directory`` on ``127.0.0.1:<port>`` from a daemon thread."""

    def __init__(self, directory: pathlib.Path, port: int = 0) -> None:
        handler = functools.partial(_Handler, directory=str(directory))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, name: str, slow: bool = False) -> str:
        prefix = SLOW_PREFIX if slow else "/"
        return f"http://127.0.0.1:{self.port}{prefix}{name}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
