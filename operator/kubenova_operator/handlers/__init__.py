"""kopf registration only: every function here is one call into plain code.

Indexes keep the controller's in-memory view (kopf fills them completely before any handler
runs, so a restarted controller knows every existing claim before it binds anything); event
handlers only wake the binder."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf

from kubenova_api import constants, kube
from kubenova_operator import binder, binding, migration
from kubenova_operator.scheduling import claims, hosts
from kubenova_operator.settings import ControllerSettings

G, V = constants.GROUP, constants.VERSION

_runtime: dict[str, Any] = {}


def configure_runtime(cfg: ControllerSettings) -> None:
    """Called by ``main`` before kopf starts: the settings the handlers use."""
    _runtime["settings"] = cfg


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
    cfg: ControllerSettings = _runtime.get("settings") or ControllerSettings()
    k = kube.Kube(kube.api_client(cfg.kubeconfig), "kubenova-controller", "kubenova-controller")
    evac = kube.Kube(k.api, "kubenova-controller-evacuation", "kubenova-controller")
    memo.binder = binder.Binder(cfg, k, migration.Migrator(cfg, k, evac))
    memo.binder_task = asyncio.create_task(memo.binder.run())


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Credentials from the same kubeconfig (or service account) the rest of kubenova uses."""
    cfg: ControllerSettings = _runtime.get("settings") or ControllerSettings()
    info: kopf.ConnectionInfo = kube.connection_info(kube.api_client(cfg.kubeconfig))
    return info


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("binder_task")
    if task is not None:
        task.cancel()


@kopf.index(G, V, constants.FLAVORS)
def flavor_specs(name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    return {name: copy.deepcopy(dict(spec))}


@kopf.index(G, V, constants.IMAGES)
def image_specs(name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    return {name: copy.deepcopy(dict(spec))}


@kopf.index(G, V, constants.HYPERVISORS)
def hypervisor_states(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, Any]:
    return {name: {"spec": copy.deepcopy(dict(spec)), "status": copy.deepcopy(dict(status))}}


@kopf.index(G, V, constants.SERVERGROUPS)
def group_policies(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    return {f"{namespace}/{name}": str(spec.get("policy", ""))}


@kopf.index(G, V, constants.SERVERS)
def server_claims(
    uid: str, namespace: str | None, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, Any] | None:
    node = status.get("nodeName")
    flavor = status.get("flavor")
    if not node or not flavor:
        return None
    group = spec.get("serverGroupRef")
    return {
        node: claims.Claim(
            uid,
            node,
            hosts.Resources.from_api(dict(flavor)),
            f"{namespace}/{group}" if group else None,
        )
    }


@kopf.index(G, V, constants.SERVERS)
def pending_servers(
    namespace: str | None,
    name: str,
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    **_: Any,
) -> dict[Any, Any] | None:
    if status.get("nodeName") or meta.get("deletionTimestamp"):
        return None
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.index(G, V, constants.SERVERS)
def server_summaries(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): migration.ServerSummary.of(copy.deepcopy(dict(body)))}


@kopf.index(G, V, constants.SERVERMIGRATIONS)
def server_migrations(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): copy.deepcopy(dict(body))}


def _snapshot(indexes: dict[str, kopf.Index[Any, Any]]) -> binder.Snapshot:
    def latest(index: kopf.Index[Any, Any]) -> dict[Any, Any]:
        return {key: next(iter(store)) for key, store in index.items() if len(store)}

    servers = latest(indexes["server_summaries"])
    migrations = list(latest(indexes["server_migrations"]).values())
    bound = [c for store in indexes["server_claims"].values() for c in store]
    bound += migration.target_claims(migrations, servers)
    pending = list(latest(indexes["pending_servers"]).values())
    alive = {c.uid for c in bound} | {b["metadata"]["uid"] for b in pending}
    view = binding.ClusterView(
        flavors=latest(indexes["flavor_specs"]),
        images=latest(indexes["image_specs"]),
        hypervisors=latest(indexes["hypervisor_states"]),
        bound=bound,
        alive_uids=alive,
        groups=latest(indexes["group_policies"]),
    )
    return binder.Snapshot(view=view, pending=pending, migrations=migrations, servers=servers)


INDEXES = (
    "flavor_specs",
    "image_specs",
    "hypervisor_states",
    "server_claims",
    "pending_servers",
    "group_policies",
    "server_summaries",
    "server_migrations",
)


def _wake(memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    b: binder.Binder | None = memo.get("binder")
    if b is None:
        return
    if not b.attached:
        # kopf's index objects are live and the same on every call: capture them once.
        indexes = {n: kwargs[n] for n in INDEXES}
        b.attach(lambda: _snapshot(indexes))
    b.kick()


@kopf.on.event(G, V, constants.SERVERS)
def server_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)


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


@kopf.on.event(G, V, constants.SERVERMIGRATIONS)
def server_migration_event(memo: kopf.Memo, **kwargs: Any) -> None:
    _wake(memo, kwargs)
