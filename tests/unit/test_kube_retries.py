"""A request the API server refused for load (429 with Retry-After) is sent again, whatever its
verb, as client-go's REST client does; once the retries are spent the 429 reaches the caller as
an answer, not as urllib3's own error. A loopback HTTP server plays the busy API server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
import urllib3

from kubenova_api import kube


class _Busy(http.server.BaseHTTPRequestHandler):
    refusals = 0
    seen: list[str] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.command)
        if len(type(self).seen) <= type(self).refusals:
            self.send_response(429)
            self.send_header("Retry-After", "0")
        else:
            self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PATCH = do_PUT = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[str]:
    _Busy.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_refused_write_is_sent_again(busy: str, method: str) -> None:
    _Busy.refusals = 3
    pool = urllib3.PoolManager(retries=kube.RetryRefused(total=10, status=10))
    answer = pool.request(method, busy, body=b"{}")
    pool.clear()
    assert answer.status == 201
    assert _Busy.seen == [method] * 4


def test_when_the_retries_are_spent_the_429_is_the_answer(busy: str) -> None:
    _Busy.refusals = 100
    pool = urllib3.PoolManager(retries=kube.RetryRefused(total=2, status=2))
    answer = pool.request("POST", busy, body=b"{}")
    pool.clear()
    assert answer.status == 429
    assert len(_Busy.seen) == 3


def test_only_a_429_with_retry_after_is_sent_again_whatever_the_verb() -> None:
    cfg_retries = kube.RetryRefused(total=kube.RETRIES_FOR_LOAD, status=kube.RETRIES_FOR_LOAD)
    assert cfg_retries.is_retry("POST", 429, has_retry_after=True)
    assert not cfg_retries.is_retry("POST", 500, has_retry_after=False)
    assert not cfg_retries.is_retry("POST", 429, has_retry_after=False)
