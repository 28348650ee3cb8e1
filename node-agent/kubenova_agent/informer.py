"""A list-then-watch cache of the Servers bound to this host, selected server-side by the
``status.nodeName`` field selector, so the agent's traffic grows with its own guests only."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants, kube

log = logging.getLogger(__name__)

Key = tuple[str, str]
OnChange = Callable[[Key], None]


def key_of(body: dict[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


class ServerInformer:
    """Objects of ``plural`` whose ``field`` is this host (Servers bound here by default)."""

    def __init__(
        self,
        k: kube.Kube,
        host_name: str,
        on_change: OnChange,
        plural: str = constants.SERVERS,
        field: str = constants.NODE_FIELD,
    ) -> None:
        self._kube = k
        self._plural = plural
        self._selector = f"{field}={host_name}"
        self._on_change = on_change
        self._store: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._store.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._store.values())

    def key_for_uid(self, uid: str) -> Key | None:
        with self._lock:
            for key, body in self._store.items():
                if body["metadata"].get("uid") == uid:
                    return key
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                rv = self._list()
                delay = 0.5
                self._watch_from(rv)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired; listing again")
                    continue
                log.warning("%s watch failed: %s; retrying in %.1fs", self._plural, exc, delay)
            except Exception as exc:
                log.warning("%s watch failed: %s; retrying in %.1fs", self._plural, exc, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _list(self) -> str:
        resp = self._kube.custom.list_cluster_custom_object(
            constants.GROUP, constants.VERSION, self._plural, field_selector=self._selector
        )
        listing = kube.as_dict(resp)
        fresh = {key_of(item): item for item in listing.get("items", [])}
        with self._lock:
            gone = set(self._store) - set(fresh)
            self._store = fresh
        for key in list(fresh) + list(gone):
            self._on_change(key)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch_from(self, rv: str) -> None:
        self._watch = watch.Watch()
        stream = self._watch.stream(
            self._kube.custom.list_cluster_custom_object,
            constants.GROUP,
            constants.VERSION,
            self._plural,
            field_selector=self._selector,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=300,
        )
        for event in stream:
            if self._stop.is_set():
                return
            kind = event["type"]
            obj = event["object"]
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                raise ApiException(status=code or 500, reason=str(obj))
            if kind == "BOOKMARK":
                continue
            key = key_of(obj)
            with self._lock:
                if kind == "DELETED":
                    self._store.pop(key, None)
                else:
                    self._store[key] = obj
            self._on_change(key)
