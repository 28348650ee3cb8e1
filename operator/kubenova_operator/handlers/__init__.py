"""kopf registration only: every function here is one call into plain code.

Indexes keep the controller's in-memory view of the small kinds, each object validated into
its model as it arrives (kopf fills them completely before any handler runs); event handlers
only wake the binder. Servers, the one kind with many objects and events, are not kopf's: the
controller's own watch keeps them (:mod:`kubenova_operator.servers`), and no pass runs before
both it and kopf's indexes have listed everything, so a restarted controller knows every
existing claim before it binds anything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kubenova_api import constants, kube
from kubenova_api.networks import Network, ProviderNetwork
from kubenova_api.resources import (
    ComputeQuota,
    ComputeQuotaSpec,
    Flavor,
    FlavorSpec,
    GroupPolicy,
    Hypervisor,
    Image,
    ImageSpec,
    ServerGroup,
    ServerMigration,
)
from kubenova_operator import (
    binder,
    binding,
    cluster,
    evacuation,
    heartbeats,
    metrics,
    migrations,
    servers,
)
from kubenova_operator.settings import ControllerSettings

G, V = constants.GROUP, constants.VERSION
log = logging.getLogger(__name__)

_runtime: dict[str, Any] = {}
HEARTBEATS_SYNC_SECONDS = 30.0


def configure_runtime(cfg: ControllerSettings) -> None:
    """Called by ``main`` before kopf starts: the settings the handlers use."""
    _runtime["settings"] = cfg


def _settings() -> ControllerSettings:
    cfg = _runtime.get("settings")
    return cfg if isinstance(cfg, ControllerSettings) else ControllerSettings()


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf deep-copies every object it sees into an "essence" to diff it for change handlers
    (on.create, on.update, on.field). The controller has none: it folds every event into its
    indexes and kicks the pass. So no essence is built, which was a deep copy of each object
    on each event. Adding a change handler means going back to the storage kopf ships."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # kubenova writes its own, meaningful Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.finalizer = f"{constants.PREFIX}/controller"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.PREFIX)
    settings.persistence.diffbase_storage = _NoDiffBase(
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
    if cfg.heartbeat_namespace:
        memo.heartbeats = heartbeats.Heartbeats(
            k.api,
            cfg.heartbeat_namespace,
            cfg.heartbeat_grace_seconds,
            on_back=memo.binder.kick_threadsafe,
        )
        memo.heartbeats.start()
        # Until the Leases are read every host would look down (its status is written only
        # when a figure changes): the first pass waits for them, a bounded time.
        if not await asyncio.to_thread(memo.heartbeats.synced.wait, HEARTBEATS_SYNC_SECONDS):
            log.error(
                "the heartbeat Leases in %s could not be read within %.0fs; hosts whose "
                "Hypervisor status is older than the grace period will be marked down",
                cfg.heartbeat_namespace,
                HEARTBEATS_SYNC_SECONDS,
            )
    memo.binder_task = asyncio.create_task(memo.binder.run())
    await asyncio.sleep(0)  # the binder is on the loop: the Server watch can wake it
    memo.servers = servers.ServerWatch(k, memo.cluster, memo.binder.kick_threadsafe)
    memo.servers.start()


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
    for watch in (memo.get("heartbeats"), memo.get("servers")):
        if watch is not None:
            watch.stop()
    b: binder.Binder | None = memo.get("binder")
    if b is not None:
        await asyncio.to_thread(b.close)


# The index and event handlers below are coroutines although they await nothing: kopf runs a
# plain function in its thread pool, one hand-over and one wake-up of the event loop for each
# handler of each event (two or three per event), and a handler run there would kick the
# binder's asyncio.Event from a thread that is not the loop's. Each is a parse of one object
# and a few dict operations, short enough for the loop.


@kopf.index(G, V, constants.FLAVORS)
async def flavor_specs(name: str, body: kopf.Body, **_: Any) -> dict[str, FlavorSpec] | None:
    flavor = Flavor.parse_or_none(body)
    return {name: flavor.spec} if flavor is not None else None


@kopf.index(G, V, constants.IMAGES)
async def image_specs(name: str, body: kopf.Body, **_: Any) -> dict[str, ImageSpec] | None:
    image = Image.parse_or_none(body)
    return {name: image.spec} if image is not None else None


@kopf.index(G, V, constants.HYPERVISORS)
async def hypervisors(name: str, body: kopf.Body, **_: Any) -> dict[str, Hypervisor] | None:
    hv = Hypervisor.parse_or_none(body)
    return {name: hv} if hv is not None else None


@kopf.index(G, V, constants.SERVERGROUPS)
async def group_policies(body: kopf.Body, **_: Any) -> dict[str, GroupPolicy] | None:
    group = ServerGroup.parse_or_none(body)
    return {group.full_name: group.spec.policy} if group is not None else None


@kopf.index(G, V, constants.NETWORKS)
async def networks(body: kopf.Body, **_: Any) -> dict[str, Network] | None:
    net = Network.parse_or_none(body)
    return {net.full_name: net} if net is not None else None


@kopf.index(G, V, constants.NETWORKS)
async def default_networks(body: kopf.Body, **_: Any) -> dict[str, str] | None:
    """Namespace -> the name of each of its Networks marked default (and not being deleted)."""
    net = Network.parse_or_none(body)
    if net is None or not net.spec.default or net.metadata.deleting:
        return None
    return {net.namespace or "": net.name}


@kopf.index(G, V, constants.PROVIDERNETWORKS)
async def provider_networks(
    name: str, body: kopf.Body, **_: Any
) -> dict[str, ProviderNetwork] | None:
    pnet = ProviderNetwork.parse_or_none(body)
    return {name: pnet} if pnet is not None else None


@kopf.index(G, V, constants.SERVERMIGRATIONS)
async def server_migrations(
    uid: str, body: kopf.Body, **_: Any
) -> dict[str, ServerMigration] | None:
    smig = ServerMigration.parse_or_none(body)
    return {uid: smig} if smig is not None else None


@kopf.index(G, V, constants.COMPUTEQUOTAS)
async def quotas(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[str, tuple[str, ComputeQuotaSpec]] | None:
    quota = ComputeQuota.parse_or_none(body)
    return {namespace or "": (name, quota.spec)} if quota is not None else None


INDEXES = (
    "flavor_specs",
    "image_specs",
    "hypervisors",
    "group_policies",
    "server_migrations",
    "networks",
    "default_networks",
    "provider_networks",
    "quotas",
)


def _latest(index: kopf.Index[Any, Any]) -> dict[Any, Any]:
    return {key: next(iter(store)) for key, store in index.items() if len(store)}


def snapshot(
    indexes: Mapping[str, kopf.Index[Any, Any]],
    known: cluster.Cluster,
    watch: servers.ServerWatch,
    beats: heartbeats.Heartbeats | None = None,
) -> binder.Snapshot | None:
    """What a pass reads, taken on the event loop: the small kinds whole, the Servers folded
    into ``known`` one changed Server at a time; None until the Servers are listed."""
    pending = watch.fold()
    if pending is None:
        return None
    smigs = list(_latest(indexes["server_migrations"]).values())
    view = binding.ClusterView(
        flavors=_latest(indexes["flavor_specs"]),
        images=_latest(indexes["image_specs"]),
        hypervisors=_latest(indexes["hypervisors"]),
        cluster=known,
        heartbeats=beats.renewed() if beats is not None else {},
        groups=_latest(indexes["group_policies"]),
        moving=migrations.target_claims(smigs, known.get),
        networks=_latest(indexes["networks"]),
        providers=_latest(indexes["provider_networks"]),
        default_networks={ns: list(store) for ns, store in indexes["default_networks"].items()},
        quotas={ns: list(store) for ns, store in indexes["quotas"].items() if len(store)},
    )
    return binder.Snapshot(view=view, pending=pending, migrations=smigs)


def _wake(memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    b: binder.Binder | None = memo.get("binder")
    known: cluster.Cluster | None = memo.get("cluster")
    watch: servers.ServerWatch | None = memo.get("servers")
    if b is None or known is None or watch is None:
        return
    if not b.attached:
        # kopf runs no handler before its indexes are complete, and its index objects are
        # live and the same on every call: capture them once.
        indexes = {n: kwargs[n] for n in INDEXES}
        beats: heartbeats.Heartbeats | None = memo.get("heartbeats")
        b.attach(lambda: snapshot(indexes, known, watch, beats))
    b.kick()


@kopf.on.event(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    field="spec.group",
    value=constants.GROUP,
)
async def kubenova_crd_event(memo: kopf.Memo, **kwargs: Any) -> None:
    """kubenova's own CRDs, which kopf lists (like every kind) only once its indexes are
    complete: the binder is attached even in a cluster with no object of any kind kopf
    watches yet, so a first Server there (no Flavor, no host) still gets its pass and says
    why it waits."""
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.FLAVORS)
async def flavor_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.IMAGES)
async def image_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.SERVERGROUPS)
async def server_group_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.HYPERVISORS)
async def hypervisor_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.COMPUTEQUOTAS)
async def quota_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.SERVERMIGRATIONS)
async def server_migration_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.NETWORKS)
async def network_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


@kopf.on.event(G, V, constants.PROVIDERNETWORKS)
async def provider_network_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)
