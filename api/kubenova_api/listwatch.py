"""List, then watch: the loop of client-go's reflector, written once for the agent's caches
(:mod:`kubenova_agent.informer`) and the controller's heartbeat Leases
(:mod:`kubenova_operator.heartbeats`).

A subclass says how to list and what to watch, and what to do with a LIST's items and with each
event; this class decides when to list and when to watch, and how to come back from failures:

- The first LIST asks for resourceVersion ``"0"``, whatever the API server's watch cache holds
  (no read of etcd; the kubelet lists its pods so). A thousand agents starting at once each
  made the API server read every Server from etcd, and ran into its handler timeout.
- A LIST is read in pages of :data:`PAGE_SIZE` objects, and its items reach
  :meth:`ListWatch.replace` a page at a time: a LIST of 10,000 Servers is never one 30 MiB
  answer held beside its 150 MiB of parsed JSON. The API server answers a LIST at ``"0"`` from
  its watch cache whole, whatever the limit; a LIST of the newest (``""``) or not older than a
  version is paged (since Kubernetes 1.34 from the cache too, before that from etcd). So a
  watch of many objects by one client (the controller's Servers) lists the newest first
  (:attr:`ListWatch.FIRST_LIST`), and a watch of few objects by many clients (each agent's own
  Servers) lists ``"0"``.
- A watch that ends, or fails, is resumed from the last resourceVersion seen (bookmarks
  included): the API server replays what came after it, or answers 410 Gone, and only then is
  the newest listed (``""``).
- An API server that refuses (429), fails (5xx) or cannot be reached is retried with jittered,
  bounded back-off and never re-listed for: a LIST is what it can least afford then. Relisting
  after every error made a thousand agents re-read every Server at once when an overloaded API
  server refused their watches, which kept it overloaded.
- Only watches that the API server rejects as such (a 4xx other than 410 and 429)
  ``RELIST_AFTER_REJECTED_WATCHES`` times in a row make it list again, not older than what it
  held.
"""

from __future__ import annotations

import abc
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubenova_api import kube

log = logging.getLogger(__name__)

RELIST_AFTER_REJECTED_WATCHES = 5
"""Watches in a row that the API server rejects as such (a 4xx other than 410 Gone and 429)
before listing again anyway."""
WATCH_SECONDS = 240
"""How long the API server keeps one watch open before ending it (then it is resumed)."""
WATCH_READ_TIMEOUT = 300.0
"""Client-side: a watch that sends nothing for this long (not even a bookmark) is treated as
dead, so a half-open connection to a vanished API server is noticed in bounded time."""
MAX_DELAY = 30.0
"""The longest wait between two failed attempts."""
PAGE_SIZE = 500
"""Objects per page of a LIST."""

WatchCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
"""A list function of the client, its positional arguments and its selectors, which
:meth:`ListWatch._follow` calls as a watch."""


class ListWatch(abc.ABC):
    """One list-then-watch, run by :meth:`run` on a thread of the caller's until :meth:`stop`."""

    UNSYNCED: str = ""
    """What waits until the first LIST is in, for the log of a failure before it."""

    FIRST_LIST: str = "0"
    """The version the first LIST asks for: ``"0"``, whatever the watch cache holds, in one
    answer; ``""``, the newest, in pages (see the module's text)."""

    def __init__(self, what: str) -> None:
        self.what = what
        """What is watched, for the log."""
        self.synced = threading.Event()
        """Set once the first LIST is in."""
        self.resource_version: str | None = None
        """The version everything is held up to (None: list first)."""
        self._stop = threading.Event()
        self._response: Any = None
        """The watch being read, if any (to cut when stopped)."""

    # ------------------------------------------------------------------ what a subclass says
    @abc.abstractmethod
    def list_objects(self, **page: Any) -> dict[str, Any]:
        """One page of the LIST, as raw JSON. ``page`` holds the client's arguments for it, to
        pass on as they are: ``limit``, then for the first page ``resource_version`` (absent
        for the newest) and ``resource_version_match``, or ``_continue`` for the next ones."""

    @abc.abstractmethod
    def watch_call(self) -> WatchCall:
        """The list call a watch follows (its ``resource_version`` and timeouts are added)."""

    @abc.abstractmethod
    def replace(self, items: Iterator[dict[str, Any]]) -> None:
        """A LIST's items, everything there is now, read a page at a time as they are iterated:
        read them all (the LIST's version is known only after the last page), and keep nothing
        from them until the end (a page that fails leaves the old state)."""

    @abc.abstractmethod
    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event, ``ADDED``, ``MODIFIED`` or ``DELETED``, with the raw object."""

    def failed(self, error: Exception, delay: float, failures: int) -> None:
        """Told of each failed LIST or watch before the wait of ``delay`` seconds: logged as a
        warning while failures are few and the first LIST is in, else as an error, saying
        what waits for the first LIST (:attr:`UNSYNCED`)."""
        why = f"{error.status} {error.reason}" if isinstance(error, ApiException) else str(error)
        synced = self.synced.is_set()
        log.log(
            logging.WARNING if failures < 3 and synced else logging.ERROR,
            "cannot %s the %s (%s); again in %.1fs%s",
            "watch" if synced else "list",
            self.what,
            why,
            delay,
            f": {self.UNSYNCED}" if not synced and self.UNSYNCED else "",
        )

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _shut(response)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        delay, failures, rejected = 0.5, 0, 0
        self.resource_version = None
        list_from = self.FIRST_LIST
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.resource_version = self._list(list_from)
                self._follow(self.resource_version)
                delay, failures, rejected = 0.5, 0, 0
                continue
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: watch expired; listing again", self.what)
                    self.resource_version, list_from = None, ""
                    continue
                error: Exception = exc
            except Exception as exc:  # cut connections, timeouts, refused connections
                error = exc
            if self.resource_version is not None and not kube.is_overloaded(error):
                rejected += 1
                if rejected >= RELIST_AFTER_REJECTED_WATCHES:
                    list_from, self.resource_version, rejected = self.resource_version, None, 0
            failures += 1
            self.failed(error, delay, failures)
            # Jittered, so that clients refused together do not come back together.
            self._stop.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, MAX_DELAY)

    def _list(self, resource_version: str) -> str:
        """List everything (``resource_version`` as asked, "" for the newest) into
        :meth:`replace`; the version the list is as of."""
        version = ""

        def items() -> Iterator[dict[str, Any]]:
            nonlocal version
            page: dict[str, Any] = {"limit": PAGE_SIZE}
            if resource_version:
                page["resource_version"] = resource_version
            if resource_version not in ("", "0"):
                # Without it a LIST with a limit would be of exactly that version (from etcd,
                # or 410 Gone once compacted), not of one at least as new.
                page["resource_version_match"] = "NotOlderThan"
            while True:
                listing = self.list_objects(**page)
                meta = listing.get("metadata") or {}
                # Every page of one LIST is of the same version, that of its first.
                version = str(meta.get("resourceVersion") or "")
                yield from listing.get("items") or []
                if not meta.get("continue"):
                    return
                page = {"limit": PAGE_SIZE, "_continue": meta["continue"]}
                del listing

        self.replace(items())
        self.synced.set()
        return version

    def _follow(self, version: str) -> None:
        """Follow the watch from ``version`` until it ends; :attr:`resource_version` follows
        every event and bookmark, so that a failure resumes where it happened.

        The response is read here, one JSON line per event, and not by
        ``kubernetes.watch.Watch``, which parses each event, writes its object back to JSON and
        parses that again (building the client's models for a built-in kind), and finds the
        list function's return type in its signature and docstring on every watch. Every caller
        here reads the raw object, which one parse gives: 41-45 µs of CPU per event of 3.7 KB
        against 102-113 µs, and 1.5 ms per watch started against 2.0-2.3 ms (a real API
        server). The API server ends every watch after :data:`WATCH_SECONDS`, and under load
        it ends the ones that fall behind: 400 to 1,000 agents' watches in a burst of 1,000
        Servers onto 100 hosts.

        A watch read to its end leaves its connection to the pool (urllib3 gives it back when
        the last chunk is in), so the resumed watch needs no new TLS connection; one that fails
        or is stopped mid-stream is closed, as what is left unread must not reach the next
        request."""
        fn, args, kwargs = self.watch_call()
        response = fn(
            *args,
            **kwargs,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(5.0, WATCH_READ_TIMEOUT),
        )
        self._response = response
        read_to_the_end = False
        try:
            if self._stop.is_set():
                return  # stopped while the request was made: stop() did not see it
            for line in _lines(response):
                if self._stop.is_set():
                    return
                event = json.loads(line)
                kind = event.get("type")
                raw = event.get("object")
                if not isinstance(raw, dict):
                    continue
                if kind == "ERROR":
                    raise ApiException(status=raw.get("code") or 500, reason=raw.get("message"))
                rv = (raw.get("metadata") or {}).get("resourceVersion")
                if kind != "BOOKMARK":
                    self.changed(kind, raw)
                if rv:
                    self.resource_version = str(rv)  # from here a resumed watch goes on
            read_to_the_end = True
        finally:
            self._response = None
            if not read_to_the_end:
                response.close()  # what is left unread must not reach the next request
            response.release_conn()


def _lines(response: Any) -> Iterator[bytes]:
    """The non-empty lines of a streamed response, each as soon as it is complete."""
    rest = b""
    for chunk in response.stream(amt=None, decode_content=False):
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        yield from (line for line in lines if line.strip())
    if rest.strip():
        yield rest


def _shut(response: Any) -> None:
    """Unblock a thread reading ``response``: shut its socket down (closing it from another
    thread can wait on the lock that the blocked read holds)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
