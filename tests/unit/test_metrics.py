"""The metrics endpoints serve what the programs count, in Prometheus' text format."""

from __future__ import annotations

import pathlib
import urllib.request

import prometheus_client

from kubenova_agent.images import ChecksumMismatch
from kubenova_agent.metrics import AgentMetrics, reason_of
from kubenova_api import metrics
from kubenova_api.kube import RetryLater
from kubenova_api.resources import Phase
from kubenova_operator import metrics as controller_metrics
from kubenova_operator.cluster import Cluster, ServerSummary


def _scrape(endpoint: metrics.Endpoint) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {sample} in:\n{text}")


def test_an_agents_registry_counts_its_work_and_measures_its_image_cache(
    tmp_path: pathlib.Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / ("a" * 64)).write_bytes(b"x" * 1000)
    (images / ("b" * 64)).write_bytes(b"y" * 24)
    (images / ".partial-download").write_bytes(b"z" * 5000)  # not an image yet
    depth = {"now": 3}
    m = AgentMetrics(lambda: depth["now"], str(images))
    m.reconciles.inc()
    m.failed(RetryLater("ImageNotReady", "later"))
    m.failed(RetryLater("ImageNotReady", "later"))
    m.failed(ChecksumMismatch("http://x", "a" * 64, "b" * 64))
    m.failed(ValueError("a bug"))
    endpoint = metrics.serve("127.0.0.1:0", m.registry)
    assert endpoint is not None
    try:
        text = _scrape(endpoint)
        assert _value(text, "kubenova_agent_reconciles_total") == 1
        errors = 'kubenova_agent_reconcile_errors_total{reason="%s"}'
        assert _value(text, errors % "ImageNotReady") == 2
        assert _value(text, errors % "ImageChecksumMismatch") == 1
        assert _value(text, errors % "ValueError") == 1
        assert _value(text, "kubenova_agent_workqueue_depth") == 3
        assert _value(text, "kubenova_agent_image_cache_bytes") == 1024
        assert _value(text, "kubenova_agent_image_cache_images") == 2
        assert _value(text, "process_resident_memory_bytes") > 0
        depth["now"] = 0
        assert _value(_scrape(endpoint), "kubenova_agent_workqueue_depth") == 0
    finally:
        endpoint.stop()
    # Two agents in one process keep separate counts.
    assert AgentMetrics(lambda: 0, str(images)).reconciles._value.get() == 0


def test_api_errors_are_labelled_by_status() -> None:
    class Api(Exception):
        status = 409

    assert reason_of(Api()) == "API409"


def test_no_address_serves_nothing() -> None:
    assert metrics.serve(None) is None


def _summary(uid: str, phase: Phase | None) -> ServerSummary:
    return ServerSummary(
        namespace="default", name=uid, uid=uid, node="h" if phase else None, phase=phase,
        flavor=None, flavor_name=None, flavor_ref="m1", image_ref="img", group_ref=None,
        zone=None, deleting=False,
    )  # fmt: skip


def test_the_controller_counts_servers_by_phase_from_its_cluster_state() -> None:
    cluster = Cluster()
    controller_metrics.count_servers_from(cluster.phases)
    assert cluster.phases() == {}
    index = {
        "a": _summary("a", None),
        "b": _summary("b", Phase.ACTIVE),
        "c": _summary("c", Phase.ACTIVE),
    }
    cluster.sync(index)
    assert cluster.phases() == {"None": 1, "ACTIVE": 2}
    index["a"] = _summary("a", Phase.BUILD)
    del index["c"]
    cluster.touch("a")
    cluster.touch("c")
    cluster.sync(index)
    assert cluster.phases() == {"BUILD": 1, "ACTIVE": 1}
    text = prometheus_client.generate_latest().decode()
    assert 'kubenova_servers{phase="ACTIVE"} 1.0' in text
    assert 'kubenova_servers{phase="BUILD"} 1.0' in text
    before = controller_metrics.BINDS._value.get()
    controller_metrics.bound(None)
    assert controller_metrics.BINDS._value.get() == before + 1
