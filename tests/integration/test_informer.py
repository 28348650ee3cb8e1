"""The agent's watch cache against a real API server: a watch that fails is resumed from the
last resourceVersion it saw, not answered by listing every object again (a thousand agents
re-listing at once is what kept an overloaded API server overloaded)."""

from __future__ import annotations

import threading

import pytest

from kubenova_agent import informer
from kubenova_api import kube
from kubenova_api.common import ObjectMeta
from kubenova_api.resources import Server, ServerSpec, ServerStatus
from kubenova_devenv import stack
from tests.conftest import eventually

HOST = "informer-host"


def _bound_server(k: kube.Kube, name: str) -> None:
    server = Server(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
    )
    k.create(server)
    k.apply_status(kube.ObjectRef.to(server), ServerStatus(nodeName=HOST))


def test_a_failed_watch_resumes_without_listing_again(
    api: stack.Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "informer-test", "informer-test")
    _bound_server(k, "inf-a")
    # A watch that hears nothing for half a second is treated as dead: it fails over and over
    # here, as a watch cut by an overloaded or restarting API server does.
    monkeypatch.setattr(informer, "WATCH_READ_TIMEOUT", 0.5)
    lists: list[str] = []
    real_list = informer.Informer._list

    def counting_list(self: informer.Informer[Server], resource_version: str) -> str:
        lists.append(resource_version)
        return real_list(self, resource_version)

    monkeypatch.setattr(informer.Informer, "_list", counting_list)
    changed: list[informer.Key] = []
    cache = informer.servers(k, HOST, changed.append)
    thread = threading.Thread(target=cache.run, daemon=True)
    thread.start()
    try:
        assert cache.synced.wait(30)
        assert [s.name for s in cache.items()] == ["inf-a"]
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
