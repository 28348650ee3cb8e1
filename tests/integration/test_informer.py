"""The agent's watch cache against a real API server: a watch that fails is resumed from the
last resourceVersion it saw, not answered by listing every object again (a thousand agents
re-listing at once is what kept an overloaded API server overloaded)."""

from __future__ import annotations

import threading

import pytest

from kubenova_agent import informer
from kubenova_api import constants, kube, listwatch
from kubenova_api.common import ObjectMeta
from kubenova_api.resources import Server, ServerSpec, ServerStatus
from kubenova_devenv import stack
from tests.conftest import UNHELD, eventually

HOST = "informer-host"


def _bound_server(k: kube.Kube, name: str) -> None:
    server = Server(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
    )
    k.create(server)
    k.apply_status(kube.ObjectRef.to(server), ServerStatus(nodeName=HOST))


@pytest.fixture
def lists(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The resourceVersion each LIST the caches make asks for, in order."""
    asked: list[str] = []
    real_list = informer.Informer._list

    def counting_list(self: informer.Informer[Server], resource_version: str) -> str:
        asked.append(resource_version)
        return real_list(self, resource_version)

    monkeypatch.setattr(informer.Informer, "_list", counting_list)
    return asked


def test_a_failed_watch_resumes_without_listing_again(
    api: stack.Stack, monkeypatch: pytest.MonkeyPatch, lists: list[str]
) -> None:
    k = kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "informer-test", "informer-test")
    _bound_server(k, "inf-a")
    # A watch that hears nothing for half a second is treated as dead: it fails over and over
    # here, as a watch cut by an overloaded or restarting API server does.
    monkeypatch.setattr(listwatch, "WATCH_READ_TIMEOUT", 0.5)
    changed: list[informer.Key] = []
    cache = informer.Informer(k, Server, HOST, changed.append)
    thread = threading.Thread(target=cache.run, daemon=True)
    thread.start()
    try:
        assert cache.synced.wait(30)
        # A LIST at resourceVersion "0" is the API server's watch cache, which may be a moment
        # behind the write just made: the watch that follows brings it.
        eventually(lambda: [s.name for s in cache.items()] == ["inf-a"], 10, what="inf-a")
        # Let a watch time out (twice, half a second each); the next starts from the last
        # resourceVersion seen.
        threading.Event().wait(2.0)
        _bound_server(k, "inf-b")
        eventually(
            lambda: sorted(s.name for s in cache.items()) == ["inf-a", "inf-b"],
            20,
            what="the Server made while the watch kept failing, seen by a resumed watch",
        )
        assert len(lists) == 1, "a failed watch made the cache list every object again"
        # ... and that one LIST was served from the API server's watch cache (as the
        # kubelet's), not read from etcd.
        assert lists == ["0"]
        assert ("default", "inf-b") in changed
    finally:
        cache.stop()
        thread.join(10)


def test_shared_watches_give_each_host_its_own_servers(api: stack.Stack, lists: list[str]) -> None:
    """A simulated fleet's agents share one Server watch; each reads exactly what a watch of
    its own, selected by the API server, would give it: a Server that moves to another host
    leaves one agent's cache (with a change the agent hears of) and enters the other's."""
    k = kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "informer-test", "informer-test")
    host_a, host_b = "shared-a", "shared-b"

    def bind(name: str, host: str) -> None:
        ref = kube.ObjectRef.named(Server, name, "default")
        k.apply_status(ref, ServerStatus(nodeName=host))

    def create(name: str, host: str) -> None:
        k.create(
            Server(
                metadata=ObjectMeta(name=name, namespace="default"),
                spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
            )
        )
        # Born with the agents' finalizer, which no agent here would remove (before its
        # binding, so no cache of a host hears of this change).
        k.merge_patch(kube.ObjectRef.named(Server, name, "default"), UNHELD)
        bind(name, host)

    create("shared-1", host_a)  # before any agent watches: heard of as a first LIST tells
    shared = informer.SharedWatches(k)
    told: dict[str, list[str]] = {host_a: [], host_b: [], "every": []}
    a = shared.hosted(Server, host_a, lambda key: told[host_a].append(key[1]), "status.nodeName")
    b = shared.hosted(Server, host_b, lambda key: told[host_b].append(key[1]), "status.nodeName")
    every = shared.every(Server, lambda key: told["every"].append(key[1]))
    threads = [threading.Thread(target=c.run, daemon=True) for c in (a, b, every)]

    def names(cache: informer.Cache[Server]) -> list[str]:
        return sorted(s.name for s in cache.items() if s.name.startswith("shared-"))

    try:
        threads[0].start()
        assert a.synced.wait(30)
        eventually(lambda: "shared-1" in told[host_a], 10, what="host a told of its Server")
        threads[1].start()
        threads[2].start()
        assert names(a) == ["shared-1"]
        assert names(b) == []
        assert b.get(("default", "shared-1")) is None
        assert "shared-1" in names(every)

        create("shared-2", host_b)
        eventually(lambda: names(b) == ["shared-2"], 10, what="host b's new Server")
        assert "shared-2" in told[host_b]
        assert "shared-2" not in told[host_a]
        assert a.key_for_uid(b.items()[0].metadata.uid or "") is None

        told[host_a].clear()
        bind("shared-1", host_b)  # it moved (a migration's end)
        eventually(lambda: names(b) == ["shared-1", "shared-2"], 10, what="the moved Server")
        assert names(a) == []
        assert told[host_a] == ["shared-1"], "the host it left must hear of it"
        assert a.get(("default", "shared-1")) is None

        k.custom.delete_namespaced_custom_object(
            constants.GROUP, constants.VERSION, "default", "servers", "shared-2"
        )
        eventually(lambda: names(b) == ["shared-1"], 10, what="the deleted Server gone")
        assert told[host_b].count("shared-2") == 2
        assert len(lists) == 1, "the three caches must share one list and watch"
    finally:
        for cache in (a, b, every):
            cache.stop()
        for thread in threads:
            thread.join(10)


def test_a_watch_the_api_server_ends_is_resumed_on_the_same_connection(
    api: stack.Stack, monkeypatch: pytest.MonkeyPatch, lists: list[str]
) -> None:
    """The API server ends every watch after its timeout, and ends under load the ones that
    fall behind; the watch read to its end leaves its connection to the resumed one (a new
    TLS connection costs both ends about 3.6 ms of CPU, measured), and stopping a cache
    blocked in a read returns at once."""
    client = kube.api_client(str(api.cp.kubeconfig()))
    k = kube.Kube(client, "informer-test", "informer-test")
    monkeypatch.setattr(listwatch, "WATCH_SECONDS", 1)

    def opened() -> int:
        pools = client.rest_client.pool_manager.pools
        keys = list(pools.keys())  # urllib3's container refuses to be iterated itself
        return sum(pools[key].num_connections for key in keys)

    cache = informer.Informer(k, Server, "same-connection-host", lambda key: None)
    thread = threading.Thread(target=cache.run, daemon=True)
    thread.start()
    try:
        assert cache.synced.wait(30)
        ended = cache.resource_version
        threading.Event().wait(3.5)  # three watches of a second, each ended by the API server
        _bound_server(k, "inf-same")  # a write of another host's object: a bookmark at most
        threading.Event().wait(1.5)
        assert len(lists) == 1
        # The Kube's own calls above (LIST, create, status) opened at most one connection of
        # their own, besides the cache's one: a new one per watch would make four or more.
        assert opened() <= 2, f"{opened()} connections for one cache's resumed watches"
        assert ended is not None
    finally:
        cache.stop()
        thread.join(10)
    assert not thread.is_alive(), "stop() did not cut the watch being read"
