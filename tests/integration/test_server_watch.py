"""The controller's own Server watch against a real API server: no pass before every Server is
listed, a Server waits for a host until its binding is seen, and the cluster's aggregates
follow each change (a binding claims room on its host, a deletion gives it back)."""

from __future__ import annotations

import threading

from kubenova_api import constants, kube
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
