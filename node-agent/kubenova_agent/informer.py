"""A list-then-watch cache of the objects of one kind whose selected field names this host
(Servers by ``status.nodeName``, ServerMigrations by ``status.sourceNode`` / ``targetNode``),
selected server-side, so the agent's traffic grows with its own guests only — or of every
object of a small kind (Networks, ProviderNetworks).

Objects are parsed into their model as they arrive; the cache hands out models. A watch that
ends or fails is resumed from the last resourceVersion seen; only a 410 Gone (or watches that
keep failing) makes it list again, and a relist tells the handler about every object that
changed or disappeared."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pydantic
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants, kube
from kubenova_api.common import KubeObject
from kubenova_api.resources import Server

log = logging.getLogger(__name__)

Key = tuple[str, str]
OnChange = Callable[[Key], None]
Obj = TypeVar("Obj", bound=KubeObject)

RELIST_AFTER_FAILED_WATCHES = 5
"""Watches in a row that the API server rejects as such (a 4xx other than 410 Gone and 429)
before the cache lists again anyway."""
WATCH_SECONDS = 240
"""How long the API server keeps one watch open before ending it (then it is resumed)."""
WATCH_READ_TIMEOUT = 300.0
"""Client-side: a watch that sends nothing for this long (not even a bookmark) is treated as
dead, so a half-open connection to a vanished API server is noticed in bounded time."""


class Informer(Generic[Obj]):
    """Objects of ``kind`` whose ``field`` is this host (every object when ``field`` is None)."""

    def __init__(
        self,
        k: kube.Kube,
        kind: type[Obj],
        host_name: str,
        on_change: OnChange,
        field: str | None = constants.NODE_FIELD,
    ) -> None:
        self._kube = k
        self._kind = kind
        self._selector = f"{field}={host_name}" if field is not None else None
        self._on_change = on_change
        self._store: dict[Key, Obj] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._rv: str | None = None
        """The last resourceVersion the cache holds everything up to (None: list first)."""
        self._watch: watch.Watch | None = None

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._store.get(key)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._store.values())

    def key_for_uid(self, uid: str) -> Key | None:
        with self._lock:
            for key, obj in self._store.items():
                if obj.metadata.uid == uid:
                    return key
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def run(self) -> None:
        delay, failed_watches = 0.5, 0
        self._rv = None
        # What a LIST asks for, as client-go's reflector does: first "0", whatever the API
        # server's watch cache holds (no read of etcd: the kubelet lists its pods so, and a
        # thousand agents starting at once each made the API server read every Server from
        # etcd); again after rejected watches, not older than what the cache had; after 410
        # Gone, the newest ("").
        list_from = "0"
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._rv = self._list(list_from)
                self._watch_from(self._rv)
                delay, failed_watches = 0.5, 0
                continue
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired; listing again", self._kind.PLURAL)
                    self._rv, list_from = None, ""
                    continue
                error: Exception = exc
            except Exception as exc:
                error = exc
            # A watch that failed (refused, cut, timed out) is resumed from the last
            # resourceVersion seen, as client-go's reflector does: the API server replays
            # what came after it, or answers 410 and then the cache lists again. Relisting
            # after every error made a thousand agents re-read every Server at once when an
            # overloaded API server refused their watches, which kept it overloaded.
            # An API server that refuses (429), fails (5xx) or cannot be reached is retried
            # with back-off and never re-listed for (client-go's reflector does the same): a
            # LIST is what it can least afford then.
            if self._rv is not None and not kube.is_overloaded(error):
                failed_watches += 1
                if failed_watches >= RELIST_AFTER_FAILED_WATCHES:
                    list_from, self._rv, failed_watches = self._rv, None, 0
            log.warning("%s watch failed: %s; retrying in %.1fs", self._kind.PLURAL, error, delay)
            # Jittered, so that hosts refused together do not come back together.
            self._stop.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 30.0)

    def _parse(self, body: dict[str, Any]) -> Obj | None:
        try:
            return self._kind.parse(body)
        except pydantic.ValidationError as exc:
            meta = body.get("metadata") or {}
            log.error(  # noqa: TRY400 - the validation error says it all
                "ignoring %s %s/%s that does not match its model: %s",
                self._kind.KIND,
                meta.get("namespace"),
                meta.get("name"),
                exc,
            )
            return None

    def _list(self, resource_version: str) -> str:
        listing = self._kube.list_raw(
            self._kind.PLURAL,
            **({"field_selector": self._selector} if self._selector else {}),
            **({"resource_version": resource_version} if resource_version else {}),
        )
        fresh: dict[Key, Obj] = {}
        for item in listing.get("items", []):
            obj = self._parse(item)
            if obj is not None:
                fresh[obj.key] = obj
        with self._lock:
            old = self._store
            self._store = fresh
        changed = [
            key
            for key, obj in fresh.items()
            if key not in old or old[key].metadata.resourceVersion != obj.metadata.resourceVersion
        ]
        for key in changed + [key for key in old if key not in fresh]:
            self._on_change(key)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch_from(self, rv: str) -> str:
        """Follow the watch until it ends; returns the last resourceVersion seen."""
        self._watch = watch.Watch()
        stream = self._watch.stream(
            self._kube.custom.list_cluster_custom_object,
            constants.GROUP,
            constants.VERSION,
            self._kind.PLURAL,
            **({"field_selector": self._selector} if self._selector else {}),
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(5.0, WATCH_READ_TIMEOUT),
        )
        for event in stream:
            if self._stop.is_set():
                return rv
            kind = event["type"]
            raw = event["object"]
            if kind == "ERROR":
                code = raw.get("code") if isinstance(raw, dict) else None
                raise ApiException(status=code or 500, reason=str(raw))
            rv = str((raw.get("metadata") or {}).get("resourceVersion") or rv)
            if kind == "BOOKMARK":
                self._rv = rv
                continue
            obj = self._parse(raw)
            if obj is None:
                continue
            with self._lock:
                if kind == "DELETED":
                    self._store.pop(obj.key, None)
                else:
                    self._store[obj.key] = obj
            self._rv = rv  # from here a resumed watch goes on
            self._on_change(obj.key)
        return rv


def every(k: kube.Kube, kind: type[Obj], on_change: OnChange) -> Informer[Obj]:
    """Every object of a (small) kind."""
    return Informer(k, kind, "", on_change, None)


def servers(k: kube.Kube, host_name: str, on_change: OnChange) -> Informer[Server]:
    """The Servers bound to this host."""
    return Informer(k, Server, host_name, on_change, constants.NODE_FIELD)
