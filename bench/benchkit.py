"""What every benchmark under ``bench/`` shares so that none can print a figure for work that
did not happen.

A benchmark times work through a watch (no polling delay), then checks with fresh reads (a LIST
or GET, and libvirt itself) that every piece of that work really happened, and only then prints
its figures, computed over that complete data. Otherwise it exits non-zero with what is missing
(:class:`BenchFailure`, :func:`run_main`).

- :class:`Watcher` lists then watches one collection for as long as the benchmark runs: a watch
  that ends is re-established from the last resourceVersion seen, a ``410 Gone`` lists again,
  and an error in its thread is kept and raised in the benchmark's own thread — never lost.
- :class:`Tracker` records, per object, every change of a few fields and when it was seen.
- :func:`verify_servers` and friends are the final checks; :func:`percentile`,
  :func:`api_writes` (the API server's own ``apiserver_request_total``), :func:`watch_delivery`
  (how its watch cache delivered events), :func:`memory_mib`
  and :func:`cpu_seconds` the figures.

Only the public surface is used (the Kubernetes API, virsh, the devenv Stack), so the same files
measure any commit of kubenova.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import pathlib
import re
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubenova_api import constants
from kubenova_devenv import libvirthost, stack

GROUP = "compute.kubenova.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Obj = dict[str, Any]


# ----------------------------------------------------------------------------- failing loudly


class BenchFailure(Exception):
    """The benchmark did not do all the work it timed; ``problems`` says what is missing."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        super().__init__(what)
        self.what = what
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join([self.what, *(f"  - {p}" for p in self.problems)])


def fail_if(problems: Sequence[str], what: str) -> None:
    """Raise :class:`BenchFailure` when ``problems`` is not empty."""
    if problems:
        raise BenchFailure(what, problems)


def run_main(main: Callable[[], int]) -> int:
    """Run a benchmark's ``main``: a :class:`BenchFailure` prints what is missing (no table)
    and exits 1."""
    try:
        return main()
    except BenchFailure as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr, flush=True)
        print("no figures printed: the run did not do all the work it timed", file=sys.stderr)
        return 1


def exited(bed: stack.Stack) -> str | None:
    """Why waiting longer cannot help: a component of the bed that exited, with its log's end."""
    gone = bed.exited()
    if gone is None:
        return None
    return f"{gone.name} exited with {gone.returncode}; end of {gone.log}:\n{gone.tail(15)}"


# ----------------------------------------------------------------------------- API access


def api_client(bed: stack.Stack, pool: int = 32) -> client.ApiClient:
    """A client as the admin of ``bed``; ``pool`` connections so concurrent calls do not queue
    behind each other (the client's default is 5 per CPU)."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(bed.cp.kubeconfig()), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def lister(api: client.ApiClient, plural: str, namespace: str | None) -> Callable[..., Any]:
    """The LIST (and WATCH) call of kubenova's ``plural`` in ``namespace`` (None: all)."""
    custom = client.CustomObjectsApi(api)
    if namespace is None:
        return functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, plural)
    return functools.partial(
        custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
    )


def list_all(list_call: Callable[..., Any], **kwargs: Any) -> tuple[list[Obj], str]:
    """A fresh, consistent LIST (pages of 500 from one snapshot): its items and resourceVersion."""
    items: list[Obj] = []
    token: str | None = None
    version = ""
    while True:
        page = list_call(limit=500, **({"_continue": token} if token else {}), **kwargs)
        version = version or page["metadata"]["resourceVersion"]
        items += page["items"]
        token = page["metadata"].get("continue")
        if not token:
            return items, version


def get(api: client.ApiClient, plural: str, namespace: str, name: str) -> Obj | None:
    """A fresh GET of one object; None if it does not exist."""
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(Obj, obj)


def status(obj: Mapping[str, Any] | None) -> Obj:
    return dict((obj or {}).get("status") or {})


def condition(obj: Mapping[str, Any] | None, type_: str) -> Obj:
    for cond in status(obj).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


# ----------------------------------------------------------------------------- watching


OnEvent = Callable[[str, Obj, float], None]
"""Called with the event type (ADDED, MODIFIED, DELETED; LISTED for what the first LIST
returned, RELISTED for what a LIST after a 410 returned), the object and when it was seen
(``time.monotonic()``)."""


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class _Transport(Exception):
    """The connection failed (reset, timed out, refused): worth another try."""


TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})


def _io(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` (a request, or reading its stream): API errors as they are, anything else
    the transport raised as :class:`_Transport` -- so that an error of the benchmark's own
    code (``on_event``) is never mistaken for a dropped connection and retried."""
    try:
        return fn(*args, **kwargs)
    except ApiException:
        raise
    except Exception as exc:
        raise _Transport(repr(exc)) from exc


class Watcher:
    """LIST, then WATCH one collection from that LIST's resourceVersion, for as long as the
    benchmark runs, handing every change to ``on_event`` in order.

    A watch ends by itself (the server's timeout, a dropped connection): it is re-established
    from the last resourceVersion seen (``reconnects``). A ``410 Gone`` means that version is
    too old: the collection is listed again and every object handed over as RELISTED, the ones
    that disappeared as DELETED (``relists``; a change first seen this way is seen late). Any
    other error ends the thread and is raised by :meth:`check`, :meth:`wait_for` and
    :meth:`stop` in the benchmark's thread, with the watch thread's traceback."""

    def __init__(
        self,
        what: str,
        list_call: Callable[..., Any],
        on_event: OnEvent,
        *,
        field_selector: str | None = None,
        watch_seconds: int = 60,
        max_failures: int = 6,
    ) -> None:
        self.what = what
        self._list = list_call
        self._on_event = on_event
        self._selectors = {"field_selector": field_selector} if field_selector else {}
        self._watch_seconds = watch_seconds
        self._max_failures = max_failures
        self.resource_version = ""
        self.events = 0
        self.reconnects = 0
        self.relists = 0
        self._known: dict[str, Obj] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._error_trace = ""
        self.gave_up: str | None = None
        """Why the last :meth:`wait_for` stopped early (``give_up``'s reason), if it did."""
        self._resp: Any = None  # the watch's streaming response, while one is open
        self._thread = threading.Thread(target=self._run, name=f"watch {what}", daemon=True)

    # -- the benchmark's side
    def start(self) -> Watcher:
        """List (in the caller's thread: when this returns, every later change will be seen),
        then follow in a thread of its own."""
        if not self._thread.is_alive():
            self._relist(initial=True)
            self._thread.start()
        return self

    def check(self) -> None:
        """Raise the watch thread's error, if it had one."""
        if self._error is not None:
            raise BenchFailure(
                f"the watch of {self.what} failed: {self._error!r}",
                [f"watch thread traceback:\n{self._error_trace}"],
            ) from self._error

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        give_up: Callable[[], str | None] | None = None,
    ) -> bool:
        """Wait until ``predicate()`` (evaluated under the lock the events are handed over
        with) holds: True; False after ``timeout`` seconds or when ``give_up()`` names a reason
        waiting cannot help (printed). Raises the watch thread's error at once."""
        deadline = time.monotonic() + timeout
        next_look = 0.0
        with self._cond:
            while True:
                self.check()
                if predicate():
                    return True
                now = time.monotonic()
                if now >= deadline:
                    return False
                if give_up is not None and now >= next_look:
                    reason = give_up()
                    if reason:
                        print(f"stopped waiting: {reason}", file=sys.stderr, flush=True)
                        self.gave_up = reason
                        return False
                    next_look = now + 1.0
                self._cond.wait(min(deadline - now, 1.0))

    def stop(self) -> None:
        """End the watch; raises its thread's error if it had one."""
        self._stopping.set()
        self._interrupt()
        self._thread.join(timeout=30)
        self.check()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # an error is already on its way out: end the watch, do not hide that error
            self._stopping.set()
            self._interrupt()

    def _interrupt(self) -> None:
        """Unblock the watch thread's read (urllib3 >= 2.3 can shut a response down from
        another thread; otherwise the read ends within ``watch_seconds``)."""
        shutdown = getattr(self._resp, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:
                pass

    # -- the thread
    def _run(self) -> None:
        failures = 0
        gone = False
        try:
            while not self._stopping.is_set():
                try:
                    if gone:
                        self._relist()
                        gone = False
                    self._follow()
                    failures = 0
                    if not self._stopping.is_set():
                        self.reconnects += 1  # ended by the server's timeout: resume
                except _Gone:
                    gone = True
                    self.relists += 1
                except (ApiException, _Transport) as exc:
                    if self._stopping.is_set():
                        return
                    if isinstance(exc, ApiException):
                        if exc.status == 410:  # a continue token of the relist expired
                            gone = True
                            self.relists += 1
                            continue
                        if exc.status not in TRANSIENT_STATUSES:
                            raise
                    failures += 1
                    if failures > self._max_failures:
                        raise
                    self.reconnects += 1
                    time.sleep(min(0.2 * 2**failures, 5.0))
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._error_trace = traceback.format_exc()
                self._cond.notify_all()

    def _relist(self, initial: bool = False) -> None:
        items, version = _io(list_all, self._list, **self._selectors)
        seen_at = time.monotonic()
        with self._cond:
            present = set()
            for obj in items:
                key = key_of(obj)
                present.add(key)
                self._known[key] = obj
                self._on_event("LISTED" if initial else "RELISTED", obj, seen_at)
            for key in set(self._known) - present:
                self._on_event("DELETED", self._known.pop(key), seen_at)
            self.resource_version = version
            self._cond.notify_all()

    def _follow(self) -> None:
        resp = _io(
            self._list,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            _request_timeout=(10, self._watch_seconds + 30),
            **self._selectors,
        )
        self._resp = resp
        try:
            if resp.status == 410:
                raise _Gone
            if resp.status != 200:
                raise ApiException(status=resp.status, reason=resp.data.decode()[:500])
            buffer = bytearray()
            chunks = resp.stream(amt=None, decode_content=False)
            while (chunk := _io(next, chunks, None)) is not None:
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        self._handle(json.loads(line))
                    if self._stopping.is_set():
                        return
        finally:
            self._resp = None
            resp.close()  # a watch read half-way must not go back to the pool as it is
            resp.release_conn()

    def _handle(self, event: Obj) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise ApiException(status=obj.get("code", 0), reason=obj.get("message", str(obj)))
        version = obj["metadata"]["resourceVersion"]
        if kind != "BOOKMARK":
            seen_at = time.monotonic()
            with self._cond:
                key = key_of(obj)
                if kind == "DELETED":
                    self._known.pop(key, None)
                else:
                    self._known[key] = obj
                self.events += 1
                self._on_event(kind, obj, seen_at)
                self._cond.notify_all()
        self.resource_version = version

    def stats(self) -> dict[str, int]:
        return {"events": self.events, "reconnects": self.reconnects, "relists": self.relists}


@dataclasses.dataclass
class Change:
    value: Any
    at: float
    late: bool
    """First seen through a LIST after a 410: ``at`` is later than the change itself."""


@dataclasses.dataclass
class Track:
    """What the watch saw of one object."""

    key: str
    uid: str | None = None
    changes: dict[str, list[Change]] = dataclasses.field(default_factory=dict)
    last: Obj | None = None
    deleted: bool = False

    def values(self, field: str) -> list[Any]:
        return [c.value for c in self.changes.get(field, [])]

    def first(self, field: str, value: Any, after: float = -math.inf) -> Change | None:
        """When ``field`` first became ``value`` (at or after ``after``)."""
        for change in self.changes.get(field, []):
            if change.value == value and change.at >= after:
                return change
        return None

    def now(self, field: str) -> Any:
        changes = self.changes.get(field)
        return changes[-1].value if changes else None


class Tracker:
    """Feeds on a :class:`Watcher`: for every object (by name: one namespace per tracker), each
    change of the ``fields`` it is given (name -> how to read it from the object) with when it
    was seen."""

    def __init__(self, fields: Mapping[str, Callable[[Obj], Any]]) -> None:
        self.fields = dict(fields)
        self.tracks: dict[str, Track] = {}
        self.listeners: list[Callable[[Track], None]] = []
        """Called with an object's track after each of its events (under the watch's lock)."""

    def on_event(self, kind: str, obj: Obj, seen_at: float) -> None:
        key = obj["metadata"]["name"]
        track = self.tracks.setdefault(key, Track(key))
        if kind == "DELETED":
            track.deleted = True
        else:
            track.uid = obj["metadata"].get("uid")
            track.last = obj
            late = kind == "RELISTED"
            for field, read in self.fields.items():
                value = read(obj)
                changes = track.changes.setdefault(field, [])
                if not changes or changes[-1].value != value:
                    changes.append(Change(value, seen_at, late))
        for listener in self.listeners:
            listener(track)

    def late(self) -> list[str]:
        """Objects with a change first seen by a relist (its time is an upper bound)."""
        return sorted(
            key
            for key, track in self.tracks.items()
            if any(c.late for changes in track.changes.values() for c in changes)
        )


def server_tracker() -> Tracker:
    """Phase and host of each Server."""
    return Tracker(
        {
            "phase": lambda o: status(o).get("phase"),
            "nodeName": lambda o: status(o).get("nodeName") or None,
        }
    )


def watch(
    what: str,
    list_call: Callable[..., Any],
    tracker: Tracker,
    field_selector: str | None = None,
) -> Watcher:
    """Start a :class:`Watcher` feeding ``tracker``."""
    return Watcher(what, list_call, tracker.on_event, field_selector=field_selector).start()


class EtcdWatch:
    """The changes of kubenova objects as etcd itself saw them, by a watch of its own on the
    bed's etcd (its v3 JSON gateway, on loopback): for each object under ``prefix`` the time
    (``time.monotonic()``) it was first stored, first stored with ``status.nodeName`` set, and
    first stored ``ACTIVE``. Beside the API server's watch it splits a Server's way into what
    etcd took and what the API server's watch path took. Diagnostic only: when it fails it
    says why in :attr:`error` and the figures built on it are left out, never guessed.

    The watch is read by ``bench/etcdwatch.py`` in a process of its own (its figures come back
    when the block ends): read in a thread of the benchmark, it took the interpreter from the
    benchmark's own watch of the API server, which at 10,000 Servers then saw each change
    late."""

    def __init__(self, etcd_url: str, prefix: str) -> None:
        self._argv = [
            sys.executable,
            str(pathlib.Path(__file__).with_name("etcdwatch.py")),
            etcd_url,
            prefix,
        ]
        self.stored: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.active: dict[str, float] = {}
        self.error: str | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> EtcdWatch:
        """Start the watch and wait until etcd has opened it: every later change is seen."""
        try:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert self._proc.stdout is not None
            first = self._proc.stdout.readline()
            if first.strip() != "ready":
                self._take(first)
                self._proc.wait(10)
                self._proc = None
        except Exception as exc:  # a diagnostic: say so, never fail the run for it
            self.error = f"could not watch etcd: {exc!r}"
        return self

    def __exit__(self, *_: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            out = proc.communicate(timeout=60)[0]  # closes its stdin: it answers and exits
            self._take(out)
        except Exception as exc:
            proc.kill()
            proc.wait()
            self.error = f"the etcd watch gave no figures: {exc!r}"

    def _take(self, line: str) -> None:
        try:
            got = json.loads(line)
        except ValueError:
            self.error = f"the etcd watch gave no figures: {line[:200]!r}"
            return
        self.stored, self.bound, self.active = got["stored"], got["bound"], got["active"]
        self.error = got["error"]


# ----------------------------------------------------------------------------- waiting


def wait_hosts_ready(bed: stack.Stack, api: client.ApiClient, hosts: Sequence[str]) -> None:
    """Every host in ``hosts`` has published its capacity and the controller counts it up
    (``Up=True``): a real condition, not a sleep, before anything is timed."""
    deadline = time.monotonic() + 300 + 0.5 * len(hosts)
    waiting = set(hosts)
    while waiting:
        items, _ = list_all(lister(api, "hypervisors", None))
        for hv in items:
            if condition(hv, "Up").get("status") == "True" and status(hv).get("total"):
                waiting.discard(hv["metadata"]["name"])
        if not waiting:
            return
        reason = exited(bed)
        if reason or time.monotonic() > deadline:
            raise BenchFailure(
                f"{len(waiting)} of {len(hosts)} hosts never came up",
                [reason or "timed out", " ".join(sorted(waiting))],
            )
        time.sleep(0.5)


def wait_text(read: Callable[[], str], text: str, timeout: float, what: str) -> float:
    """Poll ``read()`` every 20 ms until it contains ``text``; when it was seen
    (``time.monotonic()``). The same poll for kubenova and for a baseline, so neither side
    pays a coarser one."""
    deadline = time.monotonic() + timeout
    while True:
        if text in read():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchFailure(f"{what}: {text!r} not seen within {timeout:.0f} s", [])
        time.sleep(0.02)


# ----------------------------------------------------------------------------- final checks


def describe_server(obj: Mapping[str, Any] | None) -> str:
    """Where a Server is: its phase and the Scheduled and Ready conditions' reasons (no names,
    so that Servers in the same place are listed together)."""
    if obj is None:
        return "missing from a fresh LIST"
    st = status(obj)
    parts = [f"phase {st.get('phase') or '(none)'}"]
    for type_ in ("Scheduled", "Ready"):
        cond = condition(obj, type_)
        if cond:
            parts.append(f"{type_}={cond.get('status')} {cond.get('reason')}")
    return ", ".join(parts)


def verify_servers(
    api: client.ApiClient,
    namespace: str,
    expected: Sequence[str],
    tracker: Tracker,
    phase: str = "ACTIVE",
) -> list[str]:
    """By a fresh LIST: every ``expected`` Server in ``phase`` on a host, bound exactly once
    (the watch saw one host and only one, the one the LIST shows; Scheduled=True), and its
    arrival in ``phase`` seen by the watch (so that its time is known). Servers not there are
    grouped by where they are, each named."""
    items, _ = list_all(lister(api, "servers", namespace))
    by_name = {o["metadata"]["name"]: o for o in items}
    stuck: dict[str, list[str]] = collections.defaultdict(list)
    example: dict[str, str] = {}
    problems: list[str] = []
    for name in expected:
        obj = by_name.get(name)
        st = status(obj)
        node = st.get("nodeName")
        if obj is None or st.get("phase") != phase or not node:
            where = describe_server(obj)
            stuck[where].append(name)
            if obj is not None and where not in example:
                why = condition(obj, "Ready") or condition(obj, "Scheduled")
                if why.get("message"):
                    example[where] = f"{name}: {why['message']}"
            continue
        track = tracker.tracks.get(name)
        hosts = track.values("nodeName") if track else []
        while hosts and hosts[0] is None:  # created unbound
            hosts.pop(0)
        if track is None or track.first("phase", phase) is None:
            problems.append(
                f"{namespace}/{name}: {phase} on {node} in the LIST, but the watch never saw it "
                f"{phase} (no time for it)"
            )
        if hosts != [node]:
            seen = " -> ".join(h or "(unbound)" for h in hosts) or "(never bound)"
            problems.append(
                f"{namespace}/{name}: not bound exactly once: the watch saw {seen}, "
                f"the LIST says {node}"
            )
        scheduled = condition(obj, "Scheduled")
        if scheduled.get("status") != "True":
            problems.append(
                f"{namespace}/{name}: {phase} on {node} but Scheduled="
                f"{scheduled.get('status')} {scheduled.get('reason')}"
            )
    missing = [
        f"{len(names)} of {len(expected)} Servers in {namespace} not {phase} ({where}): "
        + " ".join(names)
        + (f"\n      e.g. {example[where]}" if where in example else "")
        for where, names in stuck.items()
    ]
    return missing + problems


def scheduled_events(api: client.ApiClient, namespace: str) -> collections.Counter[str]:
    """Server name -> how many times the controller said it bound it (Events of reason
    ``Scheduled``, counting repeats of an aggregated Event)."""
    core = client.CoreV1Api(api)
    counts: collections.Counter[str] = collections.Counter()
    token: str | None = None
    while True:
        page = core.list_namespaced_event(
            namespace,
            field_selector="involvedObject.kind=Server,reason=Scheduled",
            limit=500,
            _continue=token,
        )
        for event in page.items:
            counts[str(event.involved_object.name)] += max(1, event.count or 1)
        token = page.metadata._continue if page.metadata else None  # the client's `continue`
        if not token:
            return counts


def verify_bound_once_by_events(
    api: client.ApiClient, namespace: str, expected: Iterable[str]
) -> list[str]:
    """No Server was bound twice according to the controller's own Events (a Server with no
    such Event passes: Events are best effort, and may be aggregated or dropped)."""
    counts = scheduled_events(api, namespace)
    return [
        f"{namespace}/{name}: bound {counts[name]} times (Scheduled Events)"
        for name in expected
        if counts[name] > 1
    ]


def verify_running_vms(
    api: client.ApiClient,
    hosts: Sequence[str],
    heartbeat_seconds: float,
    give_up: Callable[[], str | None] | None = None,
) -> list[str]:
    """On the hosts themselves (the domains each agent finds running in libvirt, published as
    ``runningVMs``): every host runs exactly the Servers ACTIVE on it, in every namespace.
    Waits for a heartbeat of every host taken after this call began, so none is stale: a
    Lease renewal (an agent renews it after publishing any figure that changed) or the
    status's own time."""
    since = dt.datetime.now(dt.UTC).replace(microsecond=0)
    wanted = set(hosts)
    deadline = time.monotonic() + max(60.0, 4 * heartbeat_seconds)
    fresh: dict[str, Obj] = {}
    while time.monotonic() < deadline:
        # The Leases first: a renewal seen after `since` vouches for the status read after it.
        renewed = lease_renewals(api)
        items, _ = list_all(lister(api, "hypervisors", None))
        fresh = {
            h["metadata"]["name"]: h
            for h in items
            if h["metadata"]["name"] in wanted
            and max(_heartbeat(h), renewed.get(h["metadata"]["name"], _NEVER)) > since
        }
        if len(fresh) == len(wanted):
            break
        if give_up is not None and (reason := give_up()):
            return [f"cannot check the hosts: {reason}"]
        time.sleep(1.0)
    problems = [
        f"host {name}: no heartbeat since the check began" for name in sorted(wanted - set(fresh))
    ]
    servers, _ = list_all(lister(api, "servers", None))
    active = collections.Counter(
        status(s).get("nodeName") for s in servers if status(s).get("phase") == "ACTIVE"
    )
    for name, hv in sorted(fresh.items()):
        running = int(status(hv).get("runningVMs", -1))
        if running != active[name]:
            problems.append(
                f"host {name}: {running} domains running in libvirt, {active[name]} Servers "
                "ACTIVE there"
            )
    return problems


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _time(raw: object) -> dt.datetime:
    if not raw:
        return _NEVER
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def _heartbeat(hv: Obj) -> dt.datetime:
    return _time(status(hv).get("lastHeartbeatTime"))


def lease_renewals(
    api: client.ApiClient, namespace: str = constants.HEARTBEAT_NAMESPACE
) -> dict[str, dt.datetime]:
    """Host -> when its agent last renewed its heartbeat Lease."""
    out: Any = client.CoordinationV1Api(api).list_namespaced_lease(
        namespace, label_selector=constants.HEARTBEAT_LEASE_LABEL, _preload_content=False
    )  # the raw response: its JSON, not models
    found: dict[str, dt.datetime] = {}
    for lease in json.loads(out.data).get("items", []):
        host = (lease["metadata"].get("labels") or {}).get(constants.HEARTBEAT_LEASE_LABEL)
        if host:
            found[host] = _time((lease.get("spec") or {}).get("renewTime"))
    return found


def domain_state(host: libvirthost.LibvirtHost, domain: str) -> str:
    """libvirt's state of ``domain`` on ``host`` (``running``, ``paused``, ``shut off``), or
    ``absent``."""
    if not host.has_domain(domain):
        return "absent"
    return host.virsh("domstate", domain).strip()


def managed_save(host: libvirthost.LibvirtHost, domain: str) -> bool:
    """Whether ``domain`` has a managed-save image (suspended to disk)."""
    info = host.virsh("dominfo", domain)
    return bool(re.search(r"^Managed save:\s+yes", info, re.MULTILINE))


# ----------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of ``values`` at or
    below it."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


@dataclasses.dataclass(frozen=True)
class WriteKey:
    resource: str
    subresource: str
    verb: str
    code: str

    @property
    def path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def api_metrics(api: client.ApiClient) -> str:
    """The API server's own metrics (``/metrics``), as text."""
    cfg = api.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    headers = {  # the credentials the client itself would send (token or none)
        str(auth["key"]): str(auth["value"])
        for auth in cfg.auth_settings().values()
        if auth.get("in") == "header" and auth.get("value")
    }
    req = urllib.request.Request(f"{cfg.host}/metrics", headers=headers)
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
        text: str = resp.read().decode()
    return text


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in ``text``: (labels, value)."""
    prefix = name + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            yield dict(re.findall(r'(\w+)="([^"]*)"', line)), float(line.rsplit(" ", 1)[1])


def api_writes(api: client.ApiClient, text: str | None = None) -> collections.Counter[WriteKey]:
    """The API server's own count of write requests so far (``apiserver_request_total``), by
    resource, subresource, verb and response code (from ``text``, its metrics, if given)."""
    out: collections.Counter[WriteKey] = collections.Counter()
    for labels, value in samples(text or api_metrics(api), "apiserver_request_total"):
        if labels.get("verb") in WRITE_VERBS:
            key = WriteKey(
                labels.get("resource", ""),
                labels.get("subresource", ""),
                labels["verb"],
                labels.get("code", ""),
            )
            out[key] += int(value)
    return out


def watch_delivery(text: str, resource: str) -> dict[str, float]:
    """How the API server's watch cache delivered events of ``resource`` so far: watchers it
    closed because they did not take events in time (each then watches again), and the summed
    seconds and count of events from etcd into the cache and from etcd to a watcher."""
    out = {"closed": 0.0, "intake_s": 0.0, "intake_n": 0.0, "delivery_s": 0.0, "delivery_n": 0.0}
    for labels, value in samples(text, "apiserver_terminated_watchers_total"):
        if labels.get("resource") == resource:
            out["closed"] += value
    stages = {"storage_to_cache": "intake", "total": "delivery"}
    for suffix in ("sum", "count"):
        metric = f"apiserver_watch_events_dispatch_duration_seconds_{suffix}"
        for labels, value in samples(text, metric):
            stage = stages.get(labels.get("stage", ""))
            if labels.get("resource") == resource and stage is not None:
                out[f"{stage}_{'s' if suffix == 'sum' else 'n'}"] += value
    return out


def summarise_watch_delivery(before: Mapping[str, float], after: Mapping[str, float]) -> Obj:
    """:func:`watch_delivery` between two readings: watchers closed, and the mean seconds of
    an event's way into the watch cache and to a watcher."""
    d = {k: after[k] - before[k] for k in before}
    return {
        "watchers_closed": int(d["closed"]),
        "intake_mean_s": round(d["intake_s"] / d["intake_n"], 3) if d["intake_n"] else None,
        "delivery_mean_s": round(d["delivery_s"] / d["delivery_n"], 3) if d["delivery_n"] else None,
    }


def summarise_writes(delta: collections.Counter[WriteKey], servers: int) -> dict[str, Any]:
    """Writes per Server that the API server carried out (2xx): to ``servers/status``, to
    ``servers`` otherwise (the creates included), Events apart; every other resource as a
    total. Refused attempts are counted apart by code and resource (409 conflicts, 422 failed
    guards, 429 from an API server over its in-flight limit): they cost a round trip each but
    changed nothing."""
    by_path: collections.Counter[str] = collections.Counter()
    by_verb: collections.Counter[str] = collections.Counter()
    conflicts: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    for key, n in delta.items():
        if n <= 0:
            continue
        if not key.code.startswith("2"):
            refused[f"{key.code} {key.path} {key.verb}"] += n
            if key.code == "409":
                conflicts[key.path] += n
            continue
        by_path[key.path] += n
        by_verb[f"{key.path} {key.verb}"] += n
    status_writes = by_path["servers/status"]
    other_writes = (
        sum(n for p, n in by_path.items() if p.split("/")[0] == "servers") - status_writes
    )
    return {
        "server_writes_per_server": round((status_writes + other_writes) / servers, 2),
        "status_writes_per_server": round(status_writes / servers, 2),
        "other_server_writes_per_server": round(other_writes / servers, 2),
        "events_per_server": round(by_path["events"] / servers, 2),
        "by_resource_and_verb": dict(sorted(by_verb.items())),
        "conflicts_409": dict(sorted(conflicts.items())),
        "refused": dict(sorted(refused.items())),
    }


def _proc(pid: int, name: str) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/{name}").read_text()
    except FileNotFoundError:
        raise BenchFailure(f"process {pid} is gone: its figures cannot be read", []) from None


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of process ``pid``, from /proc."""
    fields = {}
    for line in _proc(pid, "status").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return round(fields.get("VmRSS", 0.0), 1), round(fields.get("VmHWM", 0.0), 1)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from /proc."""
    stat = _proc(pid, "stat")
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def cpu_pids(bed: stack.Stack) -> dict[str, int]:
    """The processes of ``bed`` whose CPU time says what bounds a run: the control plane,
    the controller and every agent process (a simfleet holds many agents)."""
    pids = {name: popen.pid for name, popen, _ in bed.cp.processes()}
    procs = [bed.controller] if bed.controller is not None else []
    for proc in [*procs, *bed.agents.values()]:
        if proc.popen is not None:
            pids[proc.name] = proc.popen.pid
    return pids


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU time so far, from /proc/stat: ``busy`` (user, nice, system,
    irq, softirq), ``idle`` (with iowait) and ``steal`` (time the hypervisor gave this VM's
    virtual CPUs to someone else), in seconds summed over the cores."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / tick,
        "idle": (idle + iowait) / tick,
        "steal": steal / tick,
    }


def machine_use(before: Mapping[str, float], after: Mapping[str, float], wall: float) -> Obj:
    """How busy the machine was between two :func:`machine_cpu` readings, in cores, and the
    share of its CPU time that was stolen: a run on a machine whose neighbours take a fifth of
    its CPU is slower for that, not for what it ran."""
    used = {k: after[k] - before[k] for k in before}
    total = sum(used.values())
    return {
        "busy_cores": round(used["busy"] / wall, 2),
        "steal_cores": round(used["steal"] / wall, 2),
        "steal_share": round(used["steal"] / total, 3) if total > 0 else 0.0,
    }


def cpu_use(before: Mapping[str, float], after: Mapping[str, float], wall: float) -> Obj:
    """CPU seconds each process used between two readings, and as a share of one core."""
    return {
        name: {
            "cpu_s": round(after[name] - before[name], 2),
            "of_one_core": round((after[name] - before[name]) / wall, 2),
        }
        for name in before
    }
