"""One agent's Prometheus metrics, in a registry of its own (a process of simulated hosts runs
many agents; the one a pod runs serves its registry at ``--metrics-address``).

==========================================  =================================================
``kubenova_agent_reconciles_total``         Server reconciles finished without an error
``kubenova_agent_reconcile_errors_total``   reconciles that failed, by reason
``kubenova_agent_workqueue_depth``          Servers waiting for a worker
``kubenova_agent_image_cache_bytes``        bytes in the image cache (``<state>/images``)
``kubenova_agent_image_cache_images``       images in it
==========================================  =================================================
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from kubenova_agent.images import ImageError
from kubenova_api.kube import RetryLater


class AgentMetrics:
    def __init__(self, queue_depth: Callable[[], int], image_dir: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.reconciles = Counter(
            "kubenova_agent_reconciles",
            "Server reconciles finished without an error.",
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubenova_agent_reconcile_errors",
            "Server reconciles that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.status_writes = Counter(
            "kubenova_agent_hypervisor_status_writes",
            "Writes of this host's Hypervisor status (a figure changed, the periodic report, "
            "or a heartbeat while the Lease cannot be renewed).",
            registry=self.registry,
        )
        self.lease_renewals = Counter(
            "kubenova_agent_heartbeat_lease_renewals",
            "Renewals of this host's heartbeat Lease, by result (renewed; busy: refused for "
            "load or unanswered; unavailable: no namespace or permission).",
            ["result"],
            registry=self.registry,
        )
        Gauge(
            "kubenova_agent_workqueue_depth",
            "Servers waiting for a worker.",
            registry=self.registry,
        ).set_function(queue_depth)
        images = pathlib.Path(image_dir)
        Gauge(
            "kubenova_agent_image_cache_bytes",
            "Bytes in the image cache.",
            registry=self.registry,
        ).set_function(lambda: sum(size for _, size in _files(images)))
        Gauge(
            "kubenova_agent_image_cache_images",
            "Images in the image cache.",
            registry=self.registry,
        ).set_function(lambda: len(_files(images)))

    def failed(self, exc: BaseException) -> None:
        self.reconcile_errors.labels(reason_of(exc)).inc()


def reason_of(exc: BaseException) -> str:
    """A short, bounded label for why a reconcile failed."""
    if isinstance(exc, RetryLater | ImageError):
        return exc.reason
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"API{status}"  # an ApiException: 409, 500, ...
    return type(exc).__name__


def _files(directory: pathlib.Path) -> list[tuple[str, int]]:
    """Complete images (partial downloads start with a dot)."""
    try:
        with os.scandir(directory) as entries:
            return [
                (e.name, e.stat().st_size)
                for e in entries
                if e.is_file() and not e.name.startswith(".")
            ]
    except FileNotFoundError:
        return []
