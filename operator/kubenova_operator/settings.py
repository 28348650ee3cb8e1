"""The controller's settings: one frozen object, read once at start-up."""

from __future__ import annotations

import argparse
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class ControllerSettings:
    heartbeat_grace_seconds: float = 60.0
    """A Hypervisor whose heartbeat is older than this gets no new Servers."""
    cpu_allocation_ratio: float = 4.0
    """Cluster-wide vCPU allocation ratio (a Hypervisor's spec may override it)."""
    ram_allocation_ratio: float = 1.0
    """Cluster-wide memory allocation ratio."""
    disk_allocation_ratio: float = 1.0
    """Cluster-wide disk allocation ratio."""
    ram_weight_multiplier: float = 1.0
    """RAM weigher: positive spreads Servers over hosts, negative stacks them."""
    cpu_weight_multiplier: float = 1.0
    """vCPU weigher: positive spreads, negative stacks."""
    soft_affinity_weight_multiplier: float = 1.0
    """How much soft-affinity groups prefer hosts with members."""
    soft_anti_affinity_weight_multiplier: float = 1.0
    """How much soft-anti-affinity groups avoid hosts with members."""
    resync_seconds: float = 10.0
    """How often pending Servers are looked at even when nothing changed."""
    max_migrations_per_host: int = 1
    """Live migrations a drain runs at once from one host (Nova's
    ``max_concurrent_live_migrations``)."""
    max_migrations: int = 4
    """Live migrations a drain runs at once in the whole cluster."""
    migration_prepare_timeout_seconds: float = 300.0
    """How long the agents may take to check and prepare a migration before it fails."""
    kubeconfig: str | None = None
    """A kubeconfig; the pod's service account is used when unset."""


def from_args(argv: list[str] | None = None) -> ControllerSettings:
    env = os.environ
    d = ControllerSettings()
    p = argparse.ArgumentParser(prog="kubenova-controller", description="kubenova controller")
    p.add_argument(
        "--heartbeat-grace-seconds",
        type=float,
        default=float(env.get("KUBENOVA_HEARTBEAT_GRACE_SECONDS", d.heartbeat_grace_seconds)),
    )
    p.add_argument(
        "--cpu-allocation-ratio",
        type=float,
        default=float(env.get("KUBENOVA_CPU_ALLOCATION_RATIO", d.cpu_allocation_ratio)),
    )
    p.add_argument(
        "--ram-allocation-ratio",
        type=float,
        default=float(env.get("KUBENOVA_RAM_ALLOCATION_RATIO", d.ram_allocation_ratio)),
    )
    p.add_argument(
        "--disk-allocation-ratio",
        type=float,
        default=float(env.get("KUBENOVA_DISK_ALLOCATION_RATIO", d.disk_allocation_ratio)),
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get("KUBENOVA_RESYNC_SECONDS", d.resync_seconds)),
    )
    for flag, attr in (
        ("--ram-weight-multiplier", "ram_weight_multiplier"),
        ("--cpu-weight-multiplier", "cpu_weight_multiplier"),
        ("--soft-affinity-weight-multiplier", "soft_affinity_weight_multiplier"),
        ("--soft-anti-affinity-weight-multiplier", "soft_anti_affinity_weight_multiplier"),
    ):
        p.add_argument(
            flag, type=float, default=float(env.get("KUBENOVA_" + attr.upper(), getattr(d, attr)))
        )
    p.add_argument(
        "--max-migrations-per-host",
        type=int,
        default=int(env.get("KUBENOVA_MAX_MIGRATIONS_PER_HOST", d.max_migrations_per_host)),
    )
    p.add_argument(
        "--max-migrations",
        type=int,
        default=int(env.get("KUBENOVA_MAX_MIGRATIONS", d.max_migrations)),
    )
    p.add_argument(
        "--migration-prepare-timeout-seconds",
        type=float,
        default=float(
            env.get(
                "KUBENOVA_MIGRATION_PREPARE_TIMEOUT_SECONDS", d.migration_prepare_timeout_seconds
            )
        ),
    )
    p.add_argument("--kubeconfig", default=env.get("KUBECONFIG"))
    a = p.parse_args(argv)
    return ControllerSettings(
        heartbeat_grace_seconds=a.heartbeat_grace_seconds,
        cpu_allocation_ratio=a.cpu_allocation_ratio,
        ram_allocation_ratio=a.ram_allocation_ratio,
        disk_allocation_ratio=a.disk_allocation_ratio,
        ram_weight_multiplier=a.ram_weight_multiplier,
        cpu_weight_multiplier=a.cpu_weight_multiplier,
        soft_affinity_weight_multiplier=a.soft_affinity_weight_multiplier,
        soft_anti_affinity_weight_multiplier=a.soft_anti_affinity_weight_multiplier,
        resync_seconds=a.resync_seconds,
        max_migrations_per_host=a.max_migrations_per_host,
        max_migrations=a.max_migrations,
        migration_prepare_timeout_seconds=a.migration_prepare_timeout_seconds,
        kubeconfig=a.kubeconfig,
    )
