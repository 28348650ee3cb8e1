"""The benchmarks cannot lie: bench_scale runs at a tiny size (a controller restart included)
and prints its table; it fails, naming the Server, when one Server never becomes ACTIVE; and
the pieces it stands on (benchkit) keep following a watch the server ends or expires, hand a
watch thread's error to the benchmark, and judge by a fresh LIST rather than by what a watch
saw."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

import benchkit
from kubenova_devenv import stack
from tests.conftest import UNHELD, delete_unheld

pytestmark = pytest.mark.timeout(300)

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def run_bench(tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """bench_scale as a person runs it; its work folder (every component's log) in ``tmp``."""
    return subprocess.run(
        [sys.executable, str(BENCH / "bench_scale.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def test_bench_scale_at_a_tiny_size_prints_its_table(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = run_bench(
        tmp_path_factory.mktemp("b"),
        "--hosts", "3", "--fleet-processes", "2", "--servers", "4", "--servers", "3",
        "--heartbeat-seconds", "3", "--ipam", "both",
        "--timeout", "120", "--idle", "4", "--shared-watches", "--restart-controller",
        "--etcd-split",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:4] == ["servers", "ipam", "hosts", "all"]
    )
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [r[:3] for r in rows] == [
        ["4", "off", "3"], ["4", "on", "3"], ["3", "off", "3"], ["3", "on", "3"]
    ], out.stdout  # fmt: skip
    for r in rows:  # all ACTIVE, p50, p95, p99 are times; writes per Server at least the create
        assert all(v.endswith("s") and float(v[:-1]) > 0 for v in r[3:7]), r
        assert float(r[8]) >= 1.0, r
        assert r[18].endswith("s") and float(r[18][:-1]) >= 0, r  # etcd->watch p50
    docs = [doc for doc in yaml.safe_load_all(out.stdout.split(lines[header])[0]) if doc]
    # The idle fleet first: every host renewed its Lease in the window (else it exits 1).
    idle = docs[0]["idle"]
    assert idle["hosts"] == 3 and idle["lease_writes_per_host_minute"] > 0, idle
    assert idle["cpu_s_per_minute"]["kube-apiserver"] > 0, idle
    # Last, the controller restarted beside the 14 Servers: a pass of the new one counted them.
    restart = docs[-1]["restart"]
    assert restart["servers"] == 14 and restart["all_counted_s"] > 0, restart
    assert restart["peak_rss_mib"] >= restart["rss_mib"] > 0, restart
    assert lines[-1].startswith("controller restarted beside 14 Servers: a pass counted"), lines
    results = docs[1:-1]
    assert all(r["shared_watches"] for r in results), results
    assert all(r["fleet_nice"] == [10] for r in results), results  # the default
    assert [(r["servers"], r["ipam"], r["active"], r["fleet_processes"]) for r in results] == [
        (4, False, 4, 2),
        (4, True, 4, 2),
        (3, False, 3, 2),
        (3, True, 3, 2),
    ]
    assert all(r["writes"]["status_writes_per_server"] > 0 for r in results), results
    for r in results:  # what the machine and the API server's watch cache did meanwhile
        assert r["machine_until_all_active"]["busy_cores"] > 0, r
        delivery = r["server_watch_delivery"]
        assert delivery["watchers_closed"] >= 0, r
        assert delivery["intake_mean_s"] is not None and delivery["intake_mean_s"] >= 0, r
        assert r["create_request_p50_p99_s"][0] > 0 and r["create_to_seen_p50_p99_s"][0] > 0, r
        # etcd's own watch saw every change: the way is split between etcd and the API server
        assert "etcd" not in r, r
        assert r["create_to_etcd_p50_p99_s"][0] > 0, r
        assert r["etcd_to_watch_p50_p99_s"][1] >= r["etcd_to_watch_p50_p99_s"][0], r


def test_bench_scale_fails_naming_the_server_that_never_became_active(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = run_bench(
        tmp_path_factory.mktemp("b"),
        "--hosts", "2", "--servers", "3", "--broken-server", "image", "--timeout", "90",
        "--heartbeat-seconds", "3",
    )  # fmt: skip
    assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-3000:])
    assert "BENCHMARK FAILED" in out.stderr, out.stderr[-3000:]
    failure = out.stderr[out.stderr.index("BENCHMARK FAILED") :]
    assert "1 of 3 Servers in scale-0 not ACTIVE (phase ERROR" in failure, failure
    assert "ImageChecksumMismatch): s00002" in failure, failure
    assert "s00000" not in failure and "s00001" not in failure, failure
    assert "all ACTIVE" not in out.stdout, out.stdout  # no table


def test_bench_openstack_detail_at_a_tiny_size_prints_its_table(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """GET /servers/detail through the facade next to the API server's LIST (simulated
    hosts): every answer checked to list all servers ACTIVE, then the table and the figures."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_openstack.py"), "--only", "detail",
         "--servers", "12", "--requests", "5", "--hosts", "2"],
        capture_output=True, text=True, timeout=280, check=False,
        env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("b"))},
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    lines = out.stdout.splitlines()
    rows = {line[:22].strip(): line[22:].split() for line in lines[1:4]}
    assert set(rows) == {"facade", "API server LIST", "ratio"}, lines
    assert all(float(v) > 0 for r in rows.values() for v in r), rows
    figures = json.loads(lines[-1])["detail"]
    assert figures["servers"] == 12 and figures["requests"] == 5, figures
    assert figures["detail_p99_ms"] >= figures["detail_p50_ms"] > 0, figures


def test_bench_status_writes_at_a_tiny_size_prints_its_table(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same status apply sent three ways (fieldValidation left out, Strict, Ignore), each
    write checked against the API server's own count and a fresh LIST, then the table."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_status_writes.py"),
         "--servers", "6", "--rounds", "2", "--threads", "2"],
        capture_output=True, text=True, timeout=200, check=False,
        env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("b"))},
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    figures = next(yaml.safe_load_all(out.stdout))
    ways = figures["ways"]
    assert set(ways) == {"default", "Strict", "Ignore"}, ways
    assert all(w["writes"] == 12 and w["p99_ms"] >= w["p50_ms"] > 0 for w in ways.values()), ways
    assert ways["default"]["ratio_to_default"] == 1.0, ways
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["fieldValidation"])
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == [
        "(left", "Strict", "Ignore",
    ], lines  # fmt: skip


# ----------------------------------------------------------------------------- benchkit


@pytest.fixture
def namespace(api: stack.Stack) -> Iterator[str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    api.kubectl("create", "namespace", name)
    yield name
    delete_unheld(api, name)


def server(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": benchkit.API_VERSION,
        "kind": "Server",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"flavorRef": "none", "imageRef": "none"},
    }


def create(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        benchkit.GROUP, benchkit.VERSION, namespace, "servers", server(name, namespace)
    )


def set_status(
    api: client.ApiClient, namespace: str, name: str, phase: str, node: str | None, reason: str
) -> None:
    """What the controller and an agent would write, written here (no controller runs)."""
    cond = {
        "type": "Scheduled",
        "status": "True" if node else "False",
        "reason": reason,
        "message": f"bound to host {node}" if node else "No valid host was found",
        "lastTransitionTime": "2026-11-29T12:00:00Z",
    }
    status: dict[str, Any] = {"phase": phase, "conditions": [cond]}
    if node:
        status["nodeName"] = node
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        benchkit.GROUP, benchkit.VERSION, namespace, "servers", name, {"status": status}
    )


def test_watch_is_resumed_when_the_server_ends_it(api: stack.Stack, namespace: str) -> None:
    kube = benchkit.api_client(api)
    tracker = benchkit.server_tracker()
    watcher = benchkit.Watcher(
        "servers", benchkit.lister(kube, "servers", namespace), tracker.on_event, watch_seconds=1
    )
    with watcher:
        for i in range(4):  # across several watches: the server ends each after a second
            create(kube, namespace, f"w{i}")
            time.sleep(1.2)
        assert watcher.wait_for(lambda: len(tracker.tracks) == 4, 30)
    assert watcher.reconnects >= 3, watcher.stats()
    assert watcher.relists == 0, watcher.stats()
    assert sorted(tracker.tracks) == ["w0", "w1", "w2", "w3"]


def test_watch_lists_again_after_410_gone(api: stack.Stack, namespace: str) -> None:
    kube = benchkit.api_client(api)
    custom = client.CustomObjectsApi(kube)
    create(kube, namespace, "kept")
    create(kube, namespace, "deleted")
    real = benchkit.lister(kube, "servers", namespace)
    watches: list[str] = []

    def list_call(**kwargs: Any) -> Any:
        if kwargs.get("watch") and not watches:
            # As if the watcher had been away while these changes happened and long enough
            # for its version to be compacted: its first watch asks for a version the API
            # server no longer has (410 Gone), and only a new LIST can tell what changed.
            custom.patch_namespaced_custom_object(  # born with the agents' finalizer
                benchkit.GROUP, benchkit.VERSION, namespace, "servers", "deleted", UNHELD
            )
            custom.delete_namespaced_custom_object(
                benchkit.GROUP, benchkit.VERSION, namespace, "servers", "deleted"
            )
            create(kube, namespace, "added")
            kwargs["resource_version"] = "1"
        if kwargs.get("watch"):
            watches.append(kwargs["resource_version"])
        return real(**kwargs)

    tracker = benchkit.server_tracker()
    with benchkit.Watcher("servers", list_call, tracker.on_event, watch_seconds=5) as watcher:
        assert sorted(tracker.tracks) == ["deleted", "kept"]
        assert watcher.wait_for(
            lambda: "added" in tracker.tracks and tracker.tracks["deleted"].deleted, 30
        ), watcher.stats()
    assert watcher.relists == 1, watcher.stats()
    assert watches[0] == "1" and len(watches) >= 2, watches
    assert tracker.late() == ["added"]  # its times are those of the relist: late, and said so
    assert tracker.tracks["kept"].deleted is False


def test_an_error_in_the_watch_thread_fails_the_benchmark(api: stack.Stack, namespace: str) -> None:
    kube = benchkit.api_client(api)

    def on_event(kind: str, obj: dict[str, Any], seen_at: float) -> None:
        if kind == "ADDED":
            raise ValueError(f"cannot record {obj['metadata']['name']}")

    watcher = benchkit.Watcher("servers", benchkit.lister(kube, "servers", namespace), on_event)
    watcher.start()
    create(kube, namespace, "boom")
    with pytest.raises(benchkit.BenchFailure, match="cannot record boom") as raised:
        watcher.wait_for(lambda: False, 30)
    assert "Traceback" in str(raised.value)
    with pytest.raises(benchkit.BenchFailure, match="cannot record boom"):
        watcher.stop()  # and stopping does not hide it either


def test_verification_judges_by_a_fresh_list_not_by_the_watch(
    api: stack.Stack, namespace: str
) -> None:
    """A follower that claims every Server ACTIVE (as the old bench_scale's did) does not make
    the run pass: the LIST shows one BUILD, Unschedulable, and one bound to a second host."""
    kube = benchkit.api_client(api)
    for name in ("s0", "s1", "s2", "s3"):
        create(kube, namespace, name)
    set_status(kube, namespace, "s0", "ACTIVE", "host-a", "Bound")
    set_status(kube, namespace, "s1", "ACTIVE", "host-b", "Bound")
    set_status(kube, namespace, "s2", "BUILD", None, "Unschedulable")
    set_status(kube, namespace, "s3", "ACTIVE", "host-a", "Bound")
    claimed = benchkit.server_tracker()
    for i, (name, hosts) in enumerate(
        {"s0": ["host-a"], "s1": ["host-a", "host-b"], "s2": ["host-a"], "s3": ["host-a"]}.items()
    ):
        for host in hosts:
            obj = server(name, namespace)
            obj["status"] = {"phase": "ACTIVE", "nodeName": host}
            claimed.on_event("MODIFIED", obj, float(i))
    problems = benchkit.verify_servers(kube, namespace, ["s0", "s1", "s2", "s3"], claimed)
    assert problems[0].startswith(
        f"1 of 4 Servers in {namespace} not ACTIVE (phase BUILD, Scheduled=False Unschedulable): s2"
    ), problems
    assert "No valid host was found" in problems[0]
    assert any("s1: not bound exactly once" in p and "host-a -> host-b" in p for p in problems)
    assert len(problems) == 2, problems

    # Two Scheduled Events for one Server: it was bound twice, whatever its status says now.
    core = client.CoreV1Api(kube)
    for i in range(2):
        core.create_namespaced_event(
            namespace,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=f"s3.{i}", namespace=namespace),
                involved_object=client.V1ObjectReference(
                    api_version=benchkit.API_VERSION, kind="Server", name="s3", namespace=namespace
                ),
                reason="Scheduled",
                message="Server bound to host host-a",
                type="Normal",
            ),
        )
    assert benchkit.verify_bound_once_by_events(kube, namespace, ["s0", "s3"]) == [
        f"{namespace}/s3: bound 2 times (Scheduled Events)"
    ]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    pct = functools.partial(benchkit.percentile, values)
    assert (pct(50), pct(95), pct(99), pct(100)) == (50.0, 95.0, 99.0, 100.0)
    assert benchkit.percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="nothing"):
        benchkit.percentile([], 50)
