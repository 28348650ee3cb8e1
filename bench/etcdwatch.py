"""A watch of etcd's own, in a process of its own, for :class:`benchkit.EtcdWatch`.

    python bench/etcdwatch.py ETCD_URL KEY_PREFIX

Opens a watch of every key under KEY_PREFIX through etcd's v3 JSON gateway, prints ``ready``
once etcd has created it, then notes for each object (the last part of its key) when
(``time.monotonic()``, the same clock in every process of the machine) it was first stored,
first stored with ``status.nodeName`` set, and first stored ``ACTIVE``. When its standard
input closes it prints those as one JSON line and exits; if the watch fails, the line says why
in ``error``.

A process of its own, because reading 30,000 changes of 1.5-3.7 KB (base64 and JSON twice
each) in a thread of the benchmark took the interpreter from the benchmark's own watch: at
10,000 Servers that watch saw each change late (p99 create->seen 49 s against 5 s). Only the
standard library: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any


class Watch:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = urllib.parse.urlsplit(url)
        self.prefix = prefix.encode()
        self.stored: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.active: dict[str, float] = {}
        self.error: str | None = None
        self.done = False
        self._lock = threading.Lock()

    def open(self) -> http.client.HTTPResponse:
        end = self.prefix[:-1] + bytes([self.prefix[-1] + 1])
        request = {
            "create_request": {
                "key": base64.b64encode(self.prefix).decode(),
                "range_end": base64.b64encode(end).decode(),
            }
        }
        host = self.url.hostname or "127.0.0.1"
        conn = http.client.HTTPConnection(host, self.url.port, timeout=10)
        conn.request("POST", "/v3/watch", body=json.dumps(request))
        resp = conn.getresponse()
        first = json.loads(resp.readline() or b"{}")
        if not first.get("result", {}).get("created"):
            raise RuntimeError(f"etcd did not open the watch: {first}")
        if conn.sock is not None:
            conn.sock.settimeout(None)
        return resp

    def read(self, resp: http.client.HTTPResponse) -> None:
        try:
            for line in resp:
                at = time.monotonic()
                for event in json.loads(line).get("result", {}).get("events", []):
                    self.note(event.get("kv", {}), at)
        except Exception as exc:
            if not self.done:
                self.error = f"the etcd watch ended: {exc!r}"
            return
        if not self.done:
            self.error = "the etcd watch ended"

    def note(self, kv: Mapping[str, Any], at: float) -> None:
        name = base64.b64decode(kv.get("key", "")).decode().rsplit("/", 1)[-1]
        value = base64.b64decode(kv.get("value", ""))
        if not value:  # deleted
            return
        status = json.loads(value).get("status") or {}  # custom resources are stored as JSON
        with self._lock:
            self.stored.setdefault(name, at)
            if status.get("nodeName"):
                self.bound.setdefault(name, at)
            if status.get("phase") == "ACTIVE":
                self.active.setdefault(name, at)

    def result(self) -> dict[str, Any]:
        with self._lock:
            return {
                "stored": dict(self.stored),
                "bound": dict(self.bound),
                "active": dict(self.active),
                "error": self.error,
            }


def main() -> None:
    url, prefix = sys.argv[1:3]
    watch = Watch(url, prefix)
    try:
        resp = watch.open()
    except Exception as exc:
        watch.error = f"could not watch etcd: {exc!r}"
        print(json.dumps(watch.result()), flush=True)
        return
    reader = threading.Thread(target=watch.read, args=(resp,), daemon=True)
    reader.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark is done with it
    watch.done = True
    print(json.dumps(watch.result()), flush=True)


if __name__ == "__main__":
    main()
