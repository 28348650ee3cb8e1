"""kopf registration only: every function here is one call into plain code.

Indexes keep the controller's in-memory view, each object validated into its model as it
arrives (kopf fills them completely before any handler runs, so a restarted controller knows
every existing claim before it binds anything). Servers are indexed as compact summaries; event
handlers only mark what changed and wake the binder."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from kubenova_api import constants, kube
from kubenova_api.common import KubeObject
from kubenova_api.resources import (
    ComputeQuota,
    ComputeQuotaSpec,
    Flavor,
    FlavorSpec,
    GroupPolicy,
    Hypervisor,
    Image,
    ImageSpec,
    Server,
    ServerGroup,
    ServerMigration,
)
from kubenova_operator import binder, binding, cluster, evacuation, metrics, migrations
from kubenova_operator.settings import ControllerSettings

G, V = constants.GROUP, constants.VERSION
Obj = TypeVar("Obj", bound=KubeObject)
log = logging.getLogger(__name__)

_runtime: dict[str, Any] = {}


def configure_runtime(cfg: ControllerSettings) -> None:
    """Called by ``main`` before kopf starts: the settings the handlers use."""
    _runtime["settings"] = cfg


def _settings() -> ControllerSettings:
    cfg = _runtime.get("settings")
    return cfg if isinstance(cfg, ControllerSettings) else ControllerSettings()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # kubenova writes its own, meaningful Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.finalizer = f"{constants.PREFIX}/controller"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.PREFIX, key="last-handled-configuration"
    )
    cfg = _settings()
    k = kube.Kube(kube.api_client(cfg.kubeconfig), "kubenova-controller", "kubenova-controller")
    progress = kube.Kube(k.api, "kubenova-controller-evacuation", "kubenova-controller")
    memo.cluster = cluster.Cluster()
    metrics.count_servers_from(memo.cluster.phases)
    memo.binder = binder.Binder(
        cfg, k, migrations.Driver(cfg, k), evacuation.Drains(cfg, k, progress)
    )
    memo.binder_task = asyncio.create_task(memo.binder.run())


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Credentials from the same kubeconfig (or service account) the rest of kubenova uses."""
    info: kopf.ConnectionInfo = kube.connection_info(kube.api_client(_settings().kubeconfig))
    return info


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("binder_task")
    if task is not None:
        task.cancel()


def _parse(kind: type[Obj], body: kopf.Body) -> Obj | None:
    """``body`` validated into its model; None (and a log line) if it does not fit."""
    try:
        return kind.parse(body)
    except pydantic.ValidationError as exc:
        name = body.metadata.name
        log.error("ignoring %s %s that does not match its model: %s", kind.KIND, name, exc)  # noqa: TRY400
        return None


@kopf.index(G, V, constants.FLAVORS)
def flavor_specs(name: str, body: kopf.Body, **_: Any) -> dict[str, FlavorSpec] | None:
    flavor = _parse(Flavor, body)
    return {name: flavor.spec} if flavor is not None else None


@kopf.index(G, V, constants.IMAGES)
def image_specs(name: str, body: kopf.Body, **_: Any) -> dict[str, ImageSpec] | None:
    image = _parse(Image, body)
    return {name: image.spec} if image is not None else None


@kopf.index(G, V, constants.HYPERVISORS)
def hypervisors(name: str, body: kopf.Body, **_: Any) -> dict[str, Hypervisor] | None:
    hv = _parse(Hypervisor, body)
    return {name: hv} if hv is not None else None


@kopf.index(G, V, constants.SERVERGROUPS)
def group_policies(body: kopf.Body, **_: Any) -> dict[str, GroupPolicy] | None:
    group = _parse(ServerGroup, body)
    return {group.full_name: group.spec.policy} if group is not None else None


@kopf.index(G, V, constants.SERVERS)
def servers(uid: str, body: kopf.Body, **_: Any) -> dict[str, cluster.ServerSummary] | None:
    server = _parse(Server, body)
    return {uid: cluster.ServerSummary.of(server)} if server is not None else None


@kopf.index(G, V, constants.SERVERS)
def pending_servers(uid: str, body: kopf.Body, **_: Any) -> dict[str, Server] | None:
    server = _parse(Server, body)
    if server is None or server.status.nodeName or server.metadata.deleting:
        return None
    return {uid: server}


@kopf.index(G, V, constants.SERVERMIGRATIONS)
def server_migrations(uid: str, body: kopf.Body, **_: Any) -> dict[str, ServerMigration] | None:
    smig = _parse(ServerMigration, body)
    return {uid: smig} if smig is not None else None


@kopf.index(G, V, constants.COMPUTEQUOTAS)
def quotas(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[str, tuple[str, ComputeQuotaSpec]] | None:
    quota = _parse(ComputeQuota, body)
    return {namespace or "": (name, quota.spec)} if quota is not None else None


INDEXES = (
    "flavor_specs",
    "image_specs",
    "hypervisors",
    "group_policies",
    "servers",
    "pending_servers",
    "server_migrations",
    "quotas",
)


def _latest(index: kopf.Index[Any, Any]) -> dict[Any, Any]:
    return {key: next(iter(store)) for key, store in index.items() if len(store)}


def snapshot(
    indexes: Mapping[str, kopf.Index[Any, Any]], known: cluster.Cluster
) -> binder.Snapshot:
    """What a pass reads, taken on the event loop: the small kinds whole, the Servers folded
    into ``known`` one changed Server at a time."""
    known.sync(indexes["servers"])
    smigs = list(_latest(indexes["server_migrations"]).values())
    view = binding.ClusterView(
        flavors=_latest(indexes["flavor_specs"]),
        images=_latest(indexes["image_specs"]),
        hypervisors=_latest(indexes["hypervisors"]),
        cluster=known,
        groups=_latest(indexes["group_policies"]),
        moving=migrations.target_claims(smigs, known.get),
        quotas={ns: list(store) for ns, store in indexes["quotas"].items() if len(store)},
    )
    pending = list(_latest(indexes["pending_servers"]).values())
    return binder.Snapshot(view=view, pending=pending, migrations=smigs)


def _wake(memo: kopf.Memo, kwargs: dict[str, Any], uid: str | None = None) -> None:
    b: binder.Binder | None = memo.get("binder")
    known: cluster.Cluster | None = memo.get("cluster")
    if b is None or known is None:
        return
    if uid is not None:
        known.touch(uid)
    if not b.attached:
        # kopf's index objects are live and the same on every call: capture them once.
        indexes = {n: kwargs[n] for n in INDEXES}
        b.attach(lambda: snapshot(indexes, known))
    b.kick()


@kopf.on.event(G, V, constants.SERVERS)
def server_event(memo: kopf.Memo, uid: str, **kwargs: Any) -> None:
    _wake(memo, kwargs, uid)


@kopf.on.event(G, V, constants.FLAVORS)
def flavor_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.IMAGES)
def image_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.SERVERGROUPS)
def server_group_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.HYPERVISORS)
def hypervisor_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.COMPUTEQUOTAS)
def quota_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.SERVERMIGRATIONS)
def server_migration_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)
