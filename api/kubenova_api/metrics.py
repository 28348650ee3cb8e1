"""The Prometheus endpoint both programs serve (prometheus-client): ``GET /metrics`` at the
``metrics_address`` setting (``--metrics-address``, e.g. ``:8080``); nothing listens without
one (the local test bed runs many agents in one process)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry


class Endpoint:
    """A running ``/metrics`` server."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    address: str | None, registry: CollectorRegistry = prometheus_client.REGISTRY
) -> Endpoint | None:
    """Serve ``registry`` at ``address`` (host:port; an empty host is every address)."""
    if not address:
        return None
    host, _, port = address.rpartition(":")
    server, thread = prometheus_client.start_http_server(
        int(port),
        addr=host or "0.0.0.0",  # noqa: S104 - a pod's metrics port, scraped from outside
        registry=registry,
    )
    return Endpoint(server, thread)
