"""Deciding where each pending Server runs and binding it: resolve its Flavor and Image, pick a
host, write ``status.nodeName``. Plain functions over plain data; kopf stays in ``handlers``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, constants, kube
from kubenova_operator.scheduling import claims, hosts, placement
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClusterView:
    """A consistent snapshot of what scheduling reads, taken from the controller's caches."""

    flavors: Mapping[str, dict[str, Any]]
    images: Mapping[str, dict[str, Any]]
    hypervisors: Mapping[str, dict[str, Any]]  # name -> {"spec":…, "status":…}
    bound: list[claims.Claim]
    alive_uids: set[str]
    groups: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """ServerGroup ``namespace/name`` -> policy."""


Defer = Callable[[Callable[[], "Outcome"]], None]
"""Hands a write over to be run later (elsewhere); see :func:`schedule`."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one Server: bound to ``host``, or waiting with a reason."""

    host: str | None
    reason: str
    message: str


def server_ref(body: Mapping[str, Any]) -> kube.ObjectRef:
    return kube.ObjectRef.of(dict(body), "Server", constants.SERVERS)


def check_references(
    spec: Mapping[str, Any], view: ClusterView
) -> tuple[dict[str, Any], dict[str, Any]] | Outcome:
    """The Server's Flavor and Image specs, or why they cannot be used."""
    flavor = view.flavors.get(spec["flavorRef"])
    if flavor is None:
        return Outcome(
            None,
            "FlavorNotFound",
            f"Flavor {spec['flavorRef']!r} does not exist; "
            "the Server will be scheduled as soon as it is created",
        )
    image = view.images.get(spec["imageRef"])
    if image is None:
        return Outcome(
            None,
            "ImageNotFound",
            f"Image {spec['imageRef']!r} does not exist; "
            "the Server will be scheduled as soon as it is created",
        )
    if int(image.get("minMemoryMiB", 0)) > int(flavor["memoryMiB"]):
        return Outcome(
            None,
            "FlavorMemoryTooSmall",
            f"Image {spec['imageRef']!r} needs "
            f"{image['minMemoryMiB']} MiB; Flavor {spec['flavorRef']!r} has "
            f"{flavor['memoryMiB']} MiB",
        )
    disk = int(flavor.get("diskGiB", 0))
    if disk and int(image.get("minDiskGiB", 0)) > disk:
        return Outcome(
            None,
            "FlavorDiskTooSmall",
            f"Image {spec['imageRef']!r} needs "
            f"{image['minDiskGiB']} GiB of disk; Flavor {spec['flavorRef']!r} has "
            f"{disk} GiB",
        )
    return flavor, image


def host_states(
    view: ClusterView, claimed: Mapping[str, hosts.Resources], cfg: ControllerSettings
) -> list[hosts.HostState]:
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=cfg.heartbeat_grace_seconds)
    defaults = hosts.Ratios(
        cfg.cpu_allocation_ratio, cfg.ram_allocation_ratio, cfg.disk_allocation_ratio
    )
    return [
        hosts.host_state(
            name,
            hv.get("spec") or {},
            hv.get("status") or {},
            claimed.get(name, hosts.Resources()),
            defaults,
            grace,
            now,
        )
        for name, hv in sorted(view.hypervisors.items())
    ]


def schedule(
    body: Mapping[str, Any],
    view: ClusterView,
    assumed: claims.Claims,
    cfg: ControllerSettings,
    k: kube.Kube,
    defer: Defer | None = None,
    states: dict[str, hosts.HostState] | None = None,
) -> Outcome:
    """Schedule one unbound Server; writes its status only when something changed.

    ``states`` (host name -> state), when given, is the pass's running view of the hosts: it is
    used instead of recomputing every host from the claims, and updated with this binding.

    The decision (and the claim it takes) is made here, at once; with ``defer`` the API
    writes that record it are handed over to run elsewhere (a pool), and the Outcome returned
    is provisional — the deferred call returns the final one."""
    spec = body["spec"]
    refs = check_references(spec, view)
    if isinstance(refs, Outcome):
        return _wait(body, refs, k, defer)
    flavor, image = refs
    group = group_key(body)
    policy = None
    members: dict[str, int] = {}
    if group is not None:
        policy = view.groups.get(group)
        if policy is None:
            return _wait(
                body,
                Outcome(
                    None,
                    "ServerGroupNotFound",
                    f"ServerGroup "
                    f"{spec['serverGroupRef']!r} does not exist in this namespace; the "
                    "Server will be scheduled as soon as it is created",
                ),
                k,
                defer,
            )
        members = group_members(group, view.bound, assumed.assumed_claims())
    request = placement_request(
        spec, hosts.Resources.from_api(flavor), image, policy, members, spec.get("hostName")
    )
    if states is None:
        claimed = assumed.per_host(view.bound, view.alive_uids)
        current = host_states(view, claimed, cfg)
    else:
        current = list(states.values())
    decision = placement.pick_host(request, current, weights(cfg))
    if isinstance(decision, placement.NoValidHost):
        return _wait(body, Outcome(None, "Unschedulable", decision.message), k, defer)
    if states is not None:
        claim_on(states, decision.host, request.resources)
    return _bind(body, decision.host, request.resources, assumed, k, defer, group)


def placement_request(
    spec: Mapping[str, Any],
    resources: hosts.Resources,
    image: Mapping[str, Any],
    policy: str | None,
    members: Mapping[str, int],
    host_name: str | None,
    ignore_hosts: frozenset[str] = frozenset(),
) -> placement.Request:
    """What a Server of ``spec`` booted from ``image`` asks of a host."""
    return placement.Request(
        resources=resources,
        zone=spec.get("availabilityZone"),
        host_name=host_name,
        arch=str(image.get("architecture", "x86_64")),
        virt_type=image.get("virtType"),
        group_policy=policy,
        group_hosts=members,
        ignore_hosts=ignore_hosts,
    )


def claim_on(states: dict[str, hosts.HostState], host: str, resources: hosts.Resources) -> None:
    """Count ``resources`` as claimed on ``host`` in a pass's running view of the hosts."""
    chosen = states[host]
    states[host] = dataclasses.replace(chosen, claimed=chosen.claimed + resources)


def weights(cfg: ControllerSettings) -> placement.Weights:
    return placement.Weights(
        ram=cfg.ram_weight_multiplier,
        cpu=cfg.cpu_weight_multiplier,
        soft_affinity=cfg.soft_affinity_weight_multiplier,
        soft_anti_affinity=cfg.soft_anti_affinity_weight_multiplier,
    )


def group_key(body: Mapping[str, Any]) -> str | None:
    ref = body["spec"].get("serverGroupRef")
    return f"{body['metadata']['namespace']}/{ref}" if ref else None


def group_members(
    group: str, bound: list[claims.Claim], assumed: list[claims.Claim]
) -> dict[str, int]:
    """Host -> how many Servers of ``group`` it has (bound, or bound by this controller and not
    yet seen back)."""
    seen: set[str] = set()
    out: dict[str, int] = {}
    for claim in [*bound, *assumed]:
        if claim.group != group or claim.uid in seen:
            continue
        seen.add(claim.uid)
        out[claim.host] = out.get(claim.host, 0) + 1
    return out


def _bind(
    body: Mapping[str, Any],
    host: str,
    resources: hosts.Resources,
    assumed: claims.Claims,
    k: kube.Kube,
    defer: Defer | None = None,
    group: str | None = None,
) -> Outcome:
    meta = body["metadata"]
    generation = meta.get("generation")
    message = f"bound to host {host}"
    conditions = common.set_condition(
        _own_conditions(body), "Scheduled", "True", "Bound", message, generation
    )
    status = {
        "phase": "BUILD",
        "nodeName": host,
        "flavor": {**resources.to_api(), "name": body["spec"]["flavorRef"]},
        "conditions": conditions,
    }
    ref = server_ref(body)
    # Assume first: a concurrent pass must see the claim even before the write returns.
    assumed.assume(claims.Claim(meta["uid"], host, resources, group))
    if defer is not None:
        defer(lambda: _write_binding(body, ref, status, host, message, assumed, k))
        return Outcome(host, "Binding", message)
    return _write_binding(body, ref, status, host, message, assumed, k)


def _write_binding(
    body: Mapping[str, Any],
    ref: kube.ObjectRef,
    status: dict[str, Any],
    host: str,
    message: str,
    assumed: claims.Claims,
    k: kube.Kube,
) -> Outcome:
    meta = body["metadata"]
    try:
        # Conditional on the version this decision was made from: if the Server changed
        # meanwhile (bound by an earlier pass, edited, deleted) the write fails with 409
        # and the next pass decides again from fresh data. A Server is never bound twice.
        k.apply_status(ref, status, resource_version=meta["resourceVersion"])
    except ApiException as exc:
        assumed.forget(meta["uid"])
        if exc.status in (404, 409):
            return Outcome(None, "Stale", "the Server changed while it was being scheduled")
        raise
    except Exception:
        assumed.forget(meta["uid"])
        raise
    k.event(ref, "Scheduled", f"Server {meta['namespace']}/{meta['name']} {message}")
    log.info("bound %s/%s to %s", meta["namespace"], meta["name"], host)
    return Outcome(host, "Bound", message)


def _own_conditions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    cond = common.get_condition((body.get("status") or {}).get("conditions"), "Scheduled")
    return [cond] if cond else []


def _wait(
    body: Mapping[str, Any], outcome: Outcome, k: kube.Kube, defer: Defer | None = None
) -> Outcome:
    """Say why the Server waits (condition + Event), unless it already says exactly that."""
    status = body.get("status") or {}
    current = common.get_condition(status.get("conditions"), "Scheduled") or {}
    if (
        current.get("status") == "False"
        and current.get("reason") == outcome.reason
        and current.get("message") == outcome.message
        and status.get("phase") == "BUILD"
    ):
        return outcome
    generation = body["metadata"].get("generation")
    conditions = common.set_condition(
        _own_conditions(body), "Scheduled", "False", outcome.reason, outcome.message, generation
    )
    ref = server_ref(body)

    def write() -> Outcome:
        kube.retrying(lambda: k.apply_status(ref, {"phase": "BUILD", "conditions": conditions}))
        if current.get("reason") != outcome.reason:
            k.event(ref, outcome.reason, outcome.message, warning=True)
        return outcome

    if defer is not None:
        defer(write)
        return outcome
    return write()
