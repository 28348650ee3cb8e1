"""A real HTTP(S) server on a loopback address that records every request it gets, with the
misbehaviours an image server can have: redirects, bodies bigger than announced, endless
bodies, trickling bodies. Tests assert on its request log that a refused URL was never
fetched."""

from __future__ import annotations

import dataclasses
import http.server
import pathlib
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from typing import Any


@dataclasses.dataclass
class Seen:
    path: str
    host_header: str | None
    server_name: str | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append(Seen(self.path, self.headers.get("Host"), srv.last_sni))
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        try:
            if parts.path == "/redirect":
                self.send_response(int(query.get("code", ["302"])[0]))
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts.path == "/unannounced":
                size = int(query["size"][0])
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                for start in range(0, size, 65536):
                    self.wfile.write(b"\1" * min(65536, size - start))
                srv.sent += size
                self.close_connection = True
            elif parts.path == "/endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                block = b"\0" * 65536
                while True:
                    self.wfile.write(block)
                    srv.sent += len(block)
            elif parts.path == "/announced":
                self.send_response(200)
                self.send_header("Content-Length", query["length"][0])
                self.end_headers()
                self.wfile.write(b"\0" * 1024)
                srv.sent += 1024
            elif parts.path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    srv.sent += 1
                    time.sleep(0.1)
            elif parts.path in srv.files:
                data = srv.files[parts.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                srv.sent += len(data)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            srv.hung_up.set()  # the client went away


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.seen: list[Seen] = []
        self.files: dict[str, bytes] = {}
        self.sent = 0
        self.hung_up = threading.Event()
        self.last_sni: str | None = None


class RecordingServer:
    """Serves on ``host`` (a loopback address) until :meth:`stop`; ``tls`` makes it HTTPS with
    a certificate for ``cert_name``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[pathlib.Path, pathlib.Path] | None = None,
    ) -> None:
        self._httpd = _Server((host, port))
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))

            def on_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
                self._httpd.last_sni = name

            ctx.sni_callback = on_sni  # type: ignore[assignment]
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def seen(self) -> list[Seen]:
        return self._httpd.seen

    @property
    def sent(self) -> int:
        return self._httpd.sent

    @property
    def hung_up(self) -> threading.Event:
        return self._httpd.hung_up

    def serve(self, path: str, data: bytes) -> str:
        self._httpd.files[path] = data
        return self.url(path)

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def free_port_on(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (loopback addresses)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for h in hosts[1:]:
                with socket.socket() as t:
                    t.bind((h, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


def self_signed(folder: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for DNS name ``name`` (and its key), made with openssl."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
