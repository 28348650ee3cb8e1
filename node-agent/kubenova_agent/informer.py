"""A list-then-watch cache of the objects of one kind whose selected field names this host
(Servers by ``status.nodeName``, ServerMigrations by ``status.sourceNode`` / ``targetNode``),
selected server-side, so the agent's traffic grows with its own guests only — or of every
object of a small kind (Networks, ProviderNetworks).

Objects are parsed into their model as they arrive; the cache hands out models. When to list
and when to watch, and how failures are come back from, is :mod:`kubenova_api.listwatch`'s
(client-go's reflector's rules); a relist tells the handler about every object that changed or
disappeared."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from kubenova_api import constants, kube, listwatch
from kubenova_api.common import KubeObject

log = logging.getLogger(__name__)

Key = tuple[str, str]
OnChange = Callable[[Key], None]
Obj = TypeVar("Obj", bound=KubeObject)


class Informer(listwatch.ListWatch, Generic[Obj]):
    """Objects of ``kind`` whose ``field`` is this host (every object when ``field`` is None)."""

    def __init__(
        self,
        k: kube.Kube,
        kind: type[Obj],
        host_name: str,
        on_change: OnChange,
        field: str | None = constants.NODE_FIELD,
    ) -> None:
        super().__init__(kind.PLURAL)
        self._kube = k
        self._kind = kind
        self._selector = f"{field}={host_name}" if field is not None else None
        self._on_change = on_change
        self._store: dict[Key, Obj] = {}
        self._lock = threading.Lock()

    @property
    def kind(self) -> type[Obj]:
        return self._kind

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

    def _selection(self) -> dict[str, str]:
        return {"field_selector": self._selector} if self._selector else {}

    def list_objects(self, **page: Any) -> dict[str, Any]:
        return self._kube.list_raw(self._kind.PLURAL, **self._selection(), **page)

    def watch_call(self) -> listwatch.WatchCall:
        args = (constants.GROUP, constants.VERSION, self._kind.PLURAL)
        return self._kube.custom.list_cluster_custom_object, args, self._selection()

    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        """A relist tells the handler about every object that changed or disappeared."""
        fresh: dict[Key, Obj] = {}
        for item in items:
            obj = self._kind.parse_or_none(item)
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

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        parsed = self._kind.parse_or_none(obj)
        if parsed is None:
            return
        with self._lock:
            if kind == "DELETED":
                self._store.pop(parsed.key, None)
            else:
                self._store[parsed.key] = parsed
        self._on_change(parsed.key)


class Cache(Protocol[Obj]):
    """What an agent reads its objects from: an :class:`Informer`, or a :class:`SharedWatches`
    view of one watch that many agents of one process share."""

    synced: threading.Event

    def get(self, key: Key) -> Obj | None: ...
    def items(self) -> list[Obj]: ...
    def key_for_uid(self, uid: str) -> Key | None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...


class Watches(Protocol):
    """Where an agent gets its caches from."""

    def hosted(
        self, kind: type[Obj], host_name: str, on_change: OnChange, field: str
    ) -> Cache[Obj]: ...

    def every(self, kind: type[Obj], on_change: OnChange) -> Cache[Obj]: ...


class OwnWatches:
    """One watch per cache, selected server-side: what an agent on its own node uses."""

    def __init__(self, k: kube.Kube) -> None:
        self._kube = k

    def hosted(
        self, kind: type[Obj], host_name: str, on_change: OnChange, field: str
    ) -> Cache[Obj]:
        return Informer(self._kube, kind, host_name, on_change, field)

    def every(self, kind: type[Obj], on_change: OnChange) -> Cache[Obj]:
        return Informer(self._kube, kind, "", on_change, None)


def field_value(obj: KubeObject, field: str) -> str | None:
    """The value of a dotted field (``status.nodeName``) of a parsed object."""
    value: object = obj
    for part in field.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return str(value)


class _Feed(Generic[Obj]):
    """One list-then-watch of every object of a kind, indexed by the fields its views select
    on, telling each view about the objects that enter, change in or leave its selection —
    what the API server does for a field-selected watch."""

    def __init__(self, k: kube.Kube, kind: type[Obj], on_idle: Callable[[], None]) -> None:
        self.informer: Informer[Obj] = Informer(k, kind, "", self._changed, None)
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._views: dict[tuple[str | None, str], list[_View[Obj]]] = {}
        self._index: dict[str, dict[str, set[Key]]] = {}
        """field -> value -> keys"""
        self._values: dict[Key, dict[str, str | None]] = {}
        self._thread: threading.Thread | None = None

    def subscribe(self, view: _View[Obj]) -> None:
        with self._lock:
            self._views.setdefault((view.field, view.value), []).append(view)
            if view.field is not None and view.field not in self._index:
                index: dict[str, set[Key]] = {}
                for obj in self.informer.items():
                    value = field_value(obj, view.field)
                    self._values.setdefault(obj.key, {})[view.field] = value
                    if value is not None:
                        index.setdefault(value, set()).add(obj.key)
                self._index[view.field] = index
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self.informer.run,
                    name=f"shared-{self.informer.kind.PLURAL}",
                    daemon=True,
                )
                self._thread.start()
        # As a watch of its own would start with a list: the view's owner hears of every object
        # it selects that the feed already holds.
        for obj in view.items():
            view.on_change(obj.key)

    def unsubscribe(self, view: _View[Obj]) -> None:
        with self._lock:
            views = self._views.get((view.field, view.value), [])
            if view in views:
                views.remove(view)
            idle = not any(self._views.values())
        if idle:
            self.informer.stop()
            self._on_idle()

    def keys(self, field: str, value: str) -> list[Key]:
        with self._lock:
            return list(self._index.get(field, {}).get(value, ()))

    def _changed(self, key: Key) -> None:
        obj = self.informer.get(key)
        told: list[_View[Obj]] = []
        with self._lock:
            told.extend(self._views.get((None, ""), []))
            before = self._values.get(key, {})
            after: dict[str, str | None] = {}
            for field, index in self._index.items():
                old = before.get(field)
                new = field_value(obj, field) if obj is not None else None
                after[field] = new
                if old is not None and old != new:
                    index.get(old, set()).discard(key)
                if new is not None:
                    index.setdefault(new, set()).add(key)
                for value in {old, new}:
                    if value is not None:
                        told.extend(self._views.get((field, value), []))
            if obj is None:
                self._values.pop(key, None)
            else:
                self._values[key] = after
        for view in told:
            view.on_change(key)


class _View(Generic[Obj]):
    """One agent's selection of a shared feed; reads like its own :class:`Informer`."""

    def __init__(
        self, feed: _Feed[Obj], field: str | None, value: str, on_change: OnChange
    ) -> None:
        self._feed = feed
        self.field = field
        self.value = value
        self.on_change = on_change
        self.synced = feed.informer.synced
        self._stop = threading.Event()

    def _selects(self, obj: Obj) -> bool:
        return self.field is None or field_value(obj, self.field) == self.value

    def get(self, key: Key) -> Obj | None:
        obj = self._feed.informer.get(key)
        return obj if obj is not None and self._selects(obj) else None

    def items(self) -> list[Obj]:
        if self.field is None:
            return self._feed.informer.items()
        found = (self._feed.informer.get(key) for key in self._feed.keys(self.field, self.value))
        return [obj for obj in found if obj is not None and self._selects(obj)]

    def key_for_uid(self, uid: str) -> Key | None:
        for obj in self.items():
            if obj.metadata.uid == uid:
                return obj.key
        return None

    def run(self) -> None:
        self._feed.subscribe(self)
        try:
            self._stop.wait()
        finally:
            self._feed.unsubscribe(self)

    def stop(self) -> None:
        self._stop.set()


class SharedWatches:
    """One watch per kind for every agent of a process (a simulated fleet's hundreds of hosts),
    each agent reading its own selection of it.

    Each agent on its own node watches its Servers with a field selector, and the API server
    filters. For a custom resource it filters every event once per watcher: its watch cache
    indexes no field of a CRD (kubernetes/enhancements#6034), so a thousand agents make every
    Server event a thousand deliveries. A simulated fleet shares the API server's two cores with
    its agents, and there that fan-out, not kubenova, is what bounds the benchmark; this keeps
    it out of the measurement, which then says so."""

    def __init__(self, k: kube.Kube) -> None:
        self._kube = k
        self._lock = threading.Lock()
        self._feeds: dict[type[KubeObject], _Feed[Any]] = {}

    def _feed(self, kind: type[Obj]) -> _Feed[Obj]:
        with self._lock:
            feed = self._feeds.get(kind)
            if feed is None:
                feed = _Feed(self._kube, kind, lambda: self._drop(kind))
                self._feeds[kind] = feed
            return feed

    def _drop(self, kind: type[KubeObject]) -> None:
        with self._lock:
            self._feeds.pop(kind, None)

    def hosted(
        self, kind: type[Obj], host_name: str, on_change: OnChange, field: str
    ) -> Cache[Obj]:
        return _View(self._feed(kind), field, host_name, on_change)

    def every(self, kind: type[Obj], on_change: OnChange) -> Cache[Obj]:
        return _View(self._feed(kind), None, "", on_change)
