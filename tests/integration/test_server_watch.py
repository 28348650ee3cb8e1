"""The controller's own Server watch against a real API server: no pass before every Server is
listed, a Server waits for a host until its binding is seen, and the cluster's aggregates
follow each change (a binding claims room on its host, a deletion gives it back)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kubenova_api import constants, kube, listwatch
from kubenova_api.common import ObjectMeta
from kubenova_api.resources import FlavorSnapshot, Server, ServerSpec, ServerStatus
from kubenova_devenv import stack
from kubenova_operator import cluster, servers
from tests.conftest import UNHELD, eventually

HOST = "watch-host"


def _create(k: kube.Kube, name: str, bound: bool) -> str:
    created = k.create(
        Server(
            metadata=ObjectMeta(name=name, namespace="default"),
            spec=ServerSpec(flavorRef="m1.tiny", imageRef="cirros"),
        )
    )
    k.merge_patch(kube.ObjectRef.named(Server, name, "default"), UNHELD)
    if bound:
        _bind(k, name)
    return str(created["metadata"]["uid"])


def _bind(k: kube.Kube, name: str) -> None:
    flavor = FlavorSnapshot(name="m1.tiny", vcpus=1, memoryMiB=512, diskGiB=1)
    status = ServerStatus(nodeName=HOST, flavor=flavor)
    k.apply_status(kube.ObjectRef.named(Server, name, "default"), status)


def test_the_controllers_server_watch_folds_every_change(api: stack.Stack) -> None:
    k = kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "watch-test", "watch-test")
    bound_uid = _create(k, "sw-bound", bound=True)
    waiting_uid = _create(k, "sw-waiting", bound=False)
    known = cluster.Cluster()
    woken = threading.Semaphore(0)
    watch = servers.ServerWatch(k, known, woken.release)

    def waiting() -> set[str]:
        folded = watch.fold()
        assert folded is not None
        return {s.uid for s in folded if s.name.startswith("sw-")}

    assert watch.fold() is None, "a pass before the Servers are listed would see no claim"
    watch.start()
    try:
        assert watch.synced.wait(30)
        assert woken.acquire(timeout=1), "the first LIST wakes the binder"
        eventually(lambda: waiting() == {waiting_uid}, 10, what="the Server waiting for a host")
        assert known.bound_to(bound_uid) == HOST
        assert known.claimed()[HOST].memory_mib == 512

        _bind(k, "sw-waiting")
        eventually(lambda: waiting() == set(), 10, what="the binding seen")
        assert known.bound_to(waiting_uid) == HOST
        assert known.claimed()[HOST].memory_mib == 1024
        assert [s.name for s in known.on_host(HOST)] == ["sw-bound", "sw-waiting"]

        k.custom.delete_namespaced_custom_object(
            constants.GROUP, constants.VERSION, "default", "servers", "sw-bound"
        )
        eventually(lambda: (waiting(), bound_uid not in known)[1], 10, what="the deletion")
        assert known.claimed()[HOST].memory_mib == 512
    finally:
        watch.stop()
        k.custom.delete_namespaced_custom_object(
            constants.GROUP, constants.VERSION, "default", "servers", "sw-waiting"
        )


def test_the_first_list_is_read_a_page_at_a_time(
    api: stack.Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller that starts beside 10,000 Servers reads them 500 at a time; here, 2."""
    k = kube.Kube(kube.api_client(str(api.cp.kubeconfig())), "watch-test", "watch-test")
    names = [f"sw-page-{i}" for i in range(5)]
    uids = {_create(k, name, bound=False) for name in names}
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 2)
    pages: list[dict[str, Any]] = []
    real_list = servers.ServerWatch.list_objects

    def counting_list(self: servers.ServerWatch, **page: Any) -> dict[str, Any]:
        pages.append(page)
        return real_list(self, **page)

    monkeypatch.setattr(servers.ServerWatch, "list_objects", counting_list)
    watch = servers.ServerWatch(k, cluster.Cluster(), lambda: None)
    watch.start()
    try:
        assert watch.synced.wait(30)
        # The LIST at "0" is the watch cache, which may be a moment behind the creates.
        eventually(lambda: uids <= {s.uid for s in watch.fold() or []}, 10, what="all five")
        assert len(pages) >= 3, pages
        assert pages[0] == {"limit": 2}, "the newest, which the API server pages"
        assert all(set(page) == {"limit", "_continue"} for page in pages[1:]), pages
    finally:
        watch.stop()
        for name in names:
            k.custom.delete_namespaced_custom_object(
                constants.GROUP, constants.VERSION, "default", "servers", name
            )
