"""The controller's Prometheus metrics (one controller per process: the default registry,
with the process's own CPU and memory besides).

=========================================  ===================================================
``kubenova_servers{phase}``                Servers by phase (``None``: no status yet)
``kubenova_pending_servers``               Servers waiting to be bound (the work of a pass)
``kubenova_scheduling_latency_seconds``    a Server's creation to its binding
``kubenova_scheduling_outcomes_total``     decisions written, by outcome (Bound, NoValidHost..)
``kubenova_binds_total``                   Servers bound (its rate is the bind rate)
``kubenova_pass_seconds``                  one pass of the controller's loop
``kubenova_migrations_total{outcome}``     finished ServerMigrations by outcome
``kubenova_migration_duration_seconds``    a migration from acceptance to its end, by outcome
``kubenova_migration_downtime_seconds``    the guest's pause at the switch-over (live moves)
=========================================  ===================================================
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MIGRATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

PENDING = Gauge("kubenova_pending_servers", "Servers waiting to be bound to a host.")
SCHEDULING_LATENCY = Histogram(
    "kubenova_scheduling_latency_seconds",
    "From a Server's creation to its binding to a host.",
    buckets=LATENCY_BUCKETS,
)
SCHEDULING_OUTCOMES = Counter(
    "kubenova_scheduling_outcomes",
    "Scheduling decisions written, by outcome (Bound, NoValidHost, Stale, ...).",
    ["outcome"],
)
BINDS = Counter("kubenova_binds", "Servers bound to a host.")
PASS_SECONDS = Histogram(
    "kubenova_pass_seconds", "One pass of the controller's loop.", buckets=LATENCY_BUCKETS
)
MIGRATIONS = Counter(
    "kubenova_migrations", "Finished ServerMigrations by outcome (Migrated, ...).", ["outcome"]
)
MIGRATION_DURATION = Histogram(
    "kubenova_migration_duration_seconds",
    "A ServerMigration from its acceptance to its end, by outcome.",
    ["outcome"],
    buckets=MIGRATION_BUCKETS,
)
MIGRATION_DOWNTIME = Histogram(
    "kubenova_migration_downtime_seconds",
    "How long a live-migrated guest was paused at the switch-over.",
    buckets=DOWNTIME_BUCKETS,
)


class _ServersByPhase(Collector):
    """``kubenova_servers{phase}``, read from the controller's cluster state at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubenova_servers", "Servers by phase.", labels=["phase"])
        counts = self.source() if self.source is not None else {}
        for phase, n in sorted(counts.items()):
            family.add_metric([phase], n)
        yield family


_SERVERS = _ServersByPhase()
prometheus_client.REGISTRY.register(_SERVERS)


def count_servers_from(source: Callable[[], Mapping[str, int]]) -> None:
    """Where ``kubenova_servers`` comes from (the cluster state, once the controller starts)."""
    _SERVERS.source = source


def bound(created: dt.datetime | None) -> None:
    BINDS.inc()
    if created is not None:
        age = (dt.datetime.now(dt.UTC) - created).total_seconds()
        SCHEDULING_LATENCY.observe(max(0.0, age))


def migration_ended(
    outcome: str,
    started: dt.datetime | None,
    completed: dt.datetime,
    downtime_ms: int | None,
) -> None:
    MIGRATIONS.labels(outcome).inc()
    if started is not None:
        seconds = (completed - started).total_seconds()
        MIGRATION_DURATION.labels(outcome).observe(max(0.0, seconds))
    if downtime_ms is not None:
        MIGRATION_DOWNTIME.observe(downtime_ms / 1000.0)
