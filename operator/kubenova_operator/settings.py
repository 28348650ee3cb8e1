"""The controller's settings: one frozen object, read once at start-up. Each field is declared
once here; its flag, environment default and ``--help`` text are generated from it
(:mod:`kubenova_api.config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from kubenova_api import config, constants
from kubenova_api.config import option


@dataclasses.dataclass(frozen=True)
class ControllerSettings:
    heartbeat_grace_seconds: float = option(
        60.0,
        "A Hypervisor whose heartbeat (its Lease's renewal, or its status's own time) is older "
        "than this is down: it gets no new Servers.",
    )
    heartbeat_namespace: str = option(
        constants.HEARTBEAT_NAMESPACE,
        "Namespace of the agents' heartbeat Leases (in a pod: its own namespace). Empty: only "
        "the Hypervisor status's time counts.",
        env="POD_NAMESPACE",
    )
    cpu_allocation_ratio: float = option(
        4.0, "Cluster-wide vCPU allocation ratio (a Hypervisor's spec may override it)."
    )
    ram_allocation_ratio: float = option(1.0, "Cluster-wide memory allocation ratio.")
    disk_allocation_ratio: float = option(1.0, "Cluster-wide disk allocation ratio.")
    ram_weight_multiplier: float = option(
        1.0, "RAM weigher: positive spreads Servers over hosts, negative stacks them."
    )
    cpu_weight_multiplier: float = option(1.0, "vCPU weigher: positive spreads, negative stacks.")
    soft_affinity_weight_multiplier: float = option(
        1.0, "How much soft-affinity groups prefer hosts with members."
    )
    soft_anti_affinity_weight_multiplier: float = option(
        1.0, "How much soft-anti-affinity groups avoid hosts with members."
    )
    resync_seconds: float = option(
        10.0, "How often pending Servers are looked at even when nothing changed."
    )
    max_migrations_per_host: int = option(
        1,
        "Live migrations a drain runs at once from one host (Nova's "
        "max_concurrent_live_migrations).",
    )
    max_migrations: int = option(4, "Live migrations a drain runs at once in the whole cluster.")
    migration_prepare_timeout_seconds: float = option(
        300.0, "How long the agents may take to check and prepare a migration before it fails."
    )
    kubeconfig: str | None = option(
        None, "A kubeconfig; the pod's service account is used when unset.", env="KUBECONFIG"
    )
    health_address: str | None = option(
        None,
        "Serve /healthz and /readyz for the kubelet's probes at host:port (e.g. :8081); "
        "nothing listens when unset.",
    )
    metrics_address: str | None = option(
        None, "Serve Prometheus metrics at host:port (e.g. :8080); nothing listens when unset."
    )
    leader_elect: bool = option(
        False,
        "Act only while holding the Lease (the chart's two replicas); off for one process.",
    )
    leader_elect_namespace: str = option(
        "", "The Lease's namespace (the pod's own by default).", env="POD_NAMESPACE"
    )
    leader_elect_lease_name: str = option("kubenova-controller", "The Lease's name.")
    leader_elect_lease_seconds: float = option(
        8.0, "How long a standby waits after the last renewal it saw before it takes the Lease."
    )
    leader_elect_renew_deadline_seconds: float = option(
        5.0, "How long the leader may fail to renew before it gives up (< the lease)."
    )
    leader_elect_retry_seconds: float = option(
        1.0, "How often the leader renews and a standby looks (< the renew deadline)."
    )


def from_args(argv: Sequence[str] | None = None) -> ControllerSettings:
    return config.parse(ControllerSettings, argv, "kubenova-controller", "kubenova controller")
