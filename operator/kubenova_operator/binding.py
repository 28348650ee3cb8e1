"""Deciding where each pending Server runs and binding it: resolve its Flavor, Image and
networks, give its NICs addresses (IPAM), pick a host that carries its networks, write
``status.nodeName`` and ``status.addresses`` in one conditional write. Plain functions over
typed data; kopf stays in ``handlers``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Mapping

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, kube
from kubenova_api.kube import ObjectRef
from kubenova_api.networks import Network, ProviderNetwork, ServerAddress
from kubenova_api.resources import (
    ComputeQuotaSpec,
    FirmwareType,
    FlavorSpec,
    GroupPolicy,
    Hypervisor,
    ImageSpec,
    Phase,
    PinnedImage,
    SecureBoot,
    Server,
    ServerStatus,
)
from kubenova_operator import metrics, networks
from kubenova_operator.cluster import Cluster
from kubenova_operator.scheduling import claims, hosts, placement
from kubenova_operator.settings import ControllerSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClusterView:
    """What scheduling reads: the controller's caches at the start of a pass."""

    flavors: Mapping[str, FlavorSpec]
    images: Mapping[str, ImageSpec]
    hypervisors: Mapping[str, Hypervisor]
    cluster: Cluster
    heartbeats: Mapping[str, dt.datetime] = dataclasses.field(default_factory=dict)
    """Host -> when its heartbeat Lease was last renewed."""
    groups: Mapping[str, GroupPolicy] = dataclasses.field(default_factory=dict)
    """ServerGroup ``namespace/name`` -> policy."""
    moving: tuple[claims.Claim, ...] = ()
    """What migrations under way hold on their targets."""
    networks: Mapping[str, Network] = dataclasses.field(default_factory=dict)
    """Network ``namespace/name`` -> Network."""
    providers: Mapping[str, ProviderNetwork] = dataclasses.field(default_factory=dict)
    """ProviderNetwork name -> ProviderNetwork."""
    default_networks: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    """Namespace -> the names of its Networks marked ``default``."""
    dhcp_reserved: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """Provider network -> the hosts' DHCP addresses on it (no Server gets one)."""
    quotas: Mapping[str, list[tuple[str, ComputeQuotaSpec]]] = dataclasses.field(
        default_factory=dict
    )
    """Namespace -> its ComputeQuotas (name, spec)."""


Defer = Callable[[Callable[[], "Outcome"]], None]
"""Hands a write over to be run later (elsewhere); see :func:`schedule`."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one Server: bound to ``host``, or waiting with a reason."""

    host: str | None
    reason: str
    message: str


def check_references(server: Server, view: ClusterView) -> tuple[FlavorSpec, ImageSpec] | Outcome:
    """The Server's Flavor and Image specs, or why they cannot be used."""
    spec = server.spec
    later = "the Server will be scheduled as soon as it is created"
    flavor = view.flavors.get(spec.flavorRef)
    if flavor is None:
        return Outcome(None, "FlavorNotFound", f"Flavor {spec.flavorRef!r} does not exist; {later}")
    image = view.images.get(spec.imageRef)
    pin = server.status.image
    if pin is not None and (image is None or image.source != pin.source()):
        # Bound before (and taken off a dead host): its pinned bits, whatever the Image of
        # that name says now or if it is gone.
        image = ImageSpec(source=pin.source(), architecture=pin.architecture)
    if image is None:
        return Outcome(None, "ImageNotFound", f"Image {spec.imageRef!r} does not exist; {later}")
    if image.minMemoryMiB > flavor.memoryMiB:
        return Outcome(
            None,
            "FlavorMemoryTooSmall",
            f"Image {spec.imageRef!r} needs {image.minMemoryMiB} MiB; Flavor {spec.flavorRef!r} "
            f"has {flavor.memoryMiB} MiB",
        )
    if flavor.diskGiB and image.minDiskGiB > flavor.diskGiB:
        return Outcome(
            None,
            "FlavorDiskTooSmall",
            f"Image {spec.imageRef!r} needs {image.minDiskGiB} GiB of disk; Flavor "
            f"{spec.flavorRef!r} has {flavor.diskGiB} GiB",
        )
    return flavor, image


def host_states(
    view: ClusterView,
    assumed: claims.Claims,
    cfg: ControllerSettings,
    cache: hosts.StateCache | None = None,
) -> dict[str, hosts.HostState]:
    """Every host as the scheduler sees it now: bound Servers' claims (kept incrementally),
    bindings in flight, and migrations holding room on their targets. With ``cache`` a host
    whose inputs did not change since the last call keeps its state."""
    claimed = view.cluster.claimed()
    for source in (assumed.per_host(), _moving(view.moving)):
        for host, size in source.items():
            claimed[host] = claimed.get(host, hosts.Resources()) + size
    now = dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=cfg.heartbeat_grace_seconds)
    defaults = hosts.Ratios(
        cfg.cpu_allocation_ratio, cfg.ram_allocation_ratio, cfg.disk_allocation_ratio
    )
    return (cache or hosts.StateCache()).states(
        view.hypervisors, claimed, defaults, grace, now, view.heartbeats
    )


def _moving(moving: tuple[claims.Claim, ...]) -> dict[str, hosts.Resources]:
    out: dict[str, hosts.Resources] = {}
    for claim in moving:
        out[claim.host] = out.get(claim.host, hosts.Resources()) + claim.resources
    return out


def schedule(
    server: Server,
    view: ClusterView,
    assumed: claims.Claims,
    states: dict[str, hosts.HostState],
    cfg: ControllerSettings,
    k: kube.Kube,
    defer: Defer | None = None,
) -> Outcome:
    """Schedule one unbound Server; writes its status only when something changed.

    ``states`` (host name -> state) is the pass's running view of the hosts, updated with this
    binding. The decision (and the claim it takes) is made here, at once; with ``defer`` the
    API writes that record it are handed over to run elsewhere (a pool), and the Outcome
    returned is provisional — the deferred call returns the final one."""
    refs = check_references(server, view)
    if isinstance(refs, Outcome):
        return _wait(server, refs, k, defer)
    flavor, image = refs
    group = group_key(server)
    policy = None
    members: dict[str, int] = {}
    if group is not None:
        policy = view.groups.get(group)
        if policy is None:
            why = (
                f"ServerGroup {server.spec.serverGroupRef!r} does not exist in this namespace; "
                "the Server will be scheduled as soon as it is created"
            )
            return _wait(server, Outcome(None, "ServerGroupNotFound", why), k, defer)
        members = group_members(group, view.cluster, assumed)
    nics = networks.resolve(
        server, view.networks, view.providers, view.default_networks, view.dhcp_reserved
    )
    if isinstance(nics, networks.Wait):
        return _wait(server, Outcome(None, nics.reason, nics.message), k, defer)
    leases = networks.allocate(server, nics, view.cluster, assumed)
    if isinstance(leases, networks.Wait):
        return _wait(server, Outcome(None, leases.reason, leases.message), k, defer)
    size = hosts.Resources(flavor.vcpus, flavor.memoryMiB, flavor.diskGiB)
    over = quota_exceeded(server, size, view, assumed)
    if over is not None:
        return _wait(server, over, k, defer)
    request = placement_request(
        server.spec.availabilityZone,
        size,
        image,
        policy,
        members,
        server.spec.hostName,
        physnets=frozenset(n.physnet for n in nics if n.physnet),
        overlay=any(n.overlay for n in nics),
    )
    decision = placement.pick_host(request, list(states.values()), weights(cfg))
    if isinstance(decision, placement.NoValidHost):
        message = decision.message
        if any(name == "ImagePropertiesFilter" for name, _ in decision.rejections):
            message += f" (the image needs {placement.image_needs(request)})"
        message += network_hint(decision, nics)
        return _wait(server, Outcome(None, "Unschedulable", message), k, defer)
    claim_on(states, decision.host, request.resources)
    addresses = networks.addresses_of(leases)
    held = tuple((nic.key, lease.ip, lease.mac) for nic, lease in leases)
    pin = server.status.image or PinnedImage.of(server.spec.imageRef, image)
    return _bind(
        server, decision.host, request.resources, assumed, k, defer, group, addresses, held, pin
    )


def network_hint(decision: placement.NoValidHost, nics: list[networks.Attachment]) -> str:
    """What NetworkFilter asked of the hosts, when it rejected some."""
    if not any(name == "NetworkFilter" for name, _ in decision.rejections):
        return ""
    wants = [
        f"physical network {n.physnet!r} (ProviderNetwork {n.name})" for n in nics if n.physnet
    ]
    if any(n.overlay for n in nics):
        wants.append("a tunnel address (tenant networks)")
    return "; the Server's networks need " + ", ".join(wants)


def quota_exceeded(
    server: Server, size: hosts.Resources, view: ClusterView, assumed: claims.Claims
) -> Outcome | None:
    """Why binding ``server`` would exceed a quota of its namespace, if it would: what is bound
    there (as the API server reports it) plus the bindings written but not seen back yet.
    Passes are serial and every binding is assumed before the next decision, so a burst
    counts each Server it binds."""
    namespace = server.namespace or ""
    limits = view.quotas.get(namespace)
    if not limits:
        return None
    count, used = view.cluster.namespace_usage(namespace)
    for claim in assumed.assumed_claims():
        if claim.namespace == namespace and view.cluster.bound_to(claim.uid) != claim.host:
            count, used = count + 1, used + claim.resources
    for name, quota in sorted(limits, key=lambda q: q[0]):
        for what, limit, have, needs in (
            ("servers", quota.servers, count, 1),
            ("vCPUs", quota.vcpus, used.vcpus, size.vcpus),
            ("MiB of memory", quota.memoryMiB, used.memory_mib, size.memory_mib),
        ):
            if limit is not None and have + needs > limit:
                return Outcome(
                    None,
                    "QuotaExceeded",
                    f"ComputeQuota {name!r} of namespace {namespace}: {have} of {limit} {what} "
                    f"in use, this server needs {needs}; it is scheduled when there is room",
                )
    return None


def placement_request(
    zone: str | None,
    resources: hosts.Resources,
    image: ImageSpec,
    policy: GroupPolicy | None,
    members: Mapping[str, int],
    host_name: str | None,
    ignore_hosts: frozenset[str] = frozenset(),
    physnets: frozenset[str] = frozenset(),
    overlay: bool = False,
) -> placement.Request:
    """What a Server of that size in ``zone`` booted from ``image`` asks of a host."""
    return placement.Request(
        physnets=physnets,
        overlay=overlay,
        resources=resources,
        zone=zone,
        host_name=host_name,
        arch=image.architecture.value,
        virt_type=image.virtType.value if image.virtType is not None else None,
        firmware=required_firmware(image),
        machine_type=image.properties.hw_machine_type,
        group_policy=policy.value if policy is not None else None,
        group_hosts=members,
        ignore_hosts=ignore_hosts,
    )


def required_firmware(image: ImageSpec) -> str | None:
    """The firmware a host must have for the image: uefi, uefi-secure-boot, or None (BIOS,
    which every host has)."""
    props = image.properties
    if props.firmware is not FirmwareType.uefi:
        return None
    return "uefi-secure-boot" if props.os_secure_boot is SecureBoot.required else "uefi"


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


def group_key(server: Server) -> str | None:
    ref = server.spec.serverGroupRef
    return f"{server.namespace}/{ref}" if ref else None


def group_members(
    group: str, cluster: Cluster, assumed: claims.Claims, exclude: str | None = None
) -> dict[str, int]:
    """Host -> how many Servers of ``group`` it has (bound, or bound by this controller and
    not yet seen back); ``exclude`` leaves one Server out (the one being moved)."""
    out = cluster.group_hosts(group)
    if exclude is not None:
        moving = cluster.by_uid(exclude)
        if moving is not None and moving.node and out.get(moving.node):
            out[moving.node] -= 1
    for claim in assumed.assumed_claims():
        if claim.group == group and cluster.bound_to(claim.uid) != claim.host:
            out[claim.host] = out.get(claim.host, 0) + 1
    return {host: n for host, n in out.items() if n > 0}


def _bind(
    server: Server,
    host: str,
    resources: hosts.Resources,
    assumed: claims.Claims,
    k: kube.Kube,
    defer: Defer | None = None,
    group: str | None = None,
    addresses: list[ServerAddress] | None = None,
    held: tuple[tuple[str, ipaddress.IPv4Address, str], ...] = (),
    image: PinnedImage | None = None,
) -> Outcome:
    message = f"bound to host {host}"
    if addresses:
        message += " with " + ", ".join(f"{a.ip} on {a.network}" for a in addresses)
    generation = server.metadata.generation
    status = ServerStatus(
        phase=Phase.BUILD,
        nodeName=host,
        flavor=resources.snapshot(server.spec.flavorRef),
        conditions=common.set_condition(
            _own_conditions(server), "Scheduled", "True", "Bound", message, generation
        ),
    )
    # The addresses go with the binding, in the same conditional write: a Server is bound
    # with its addresses or not at all. (An empty list is written too: "no NIC" is decided.)
    status.addresses = addresses or []
    if image is not None:
        status.image = image  # the bits it is built from, wherever it goes later
    _keep_history(server, status)
    # Assume first: a concurrent pass must see the claim even before the write returns.
    assumed.assume(
        claims.Claim(
            server.uid, host, resources, group, addresses=held, namespace=server.namespace or ""
        )
    )
    if defer is not None:
        defer(lambda: _write_binding(server, status, host, message, assumed, k))
        return Outcome(host, "Binding", message)
    return _write_binding(server, status, host, message, assumed, k)


def _write_binding(
    server: Server,
    status: ServerStatus,
    host: str,
    message: str,
    assumed: claims.Claims,
    k: kube.Kube,
) -> Outcome:
    ref = ObjectRef.to(server)
    try:
        # Conditional on the version this decision was made from: if the Server changed
        # meanwhile (bound by an earlier pass, edited, deleted) the write fails with 409
        # and the next pass decides again from fresh data. A Server is never bound twice.
        k.apply_status(ref, status, resource_version=server.metadata.resourceVersion)
    except ApiException as exc:
        assumed.forget(server.uid)
        if exc.status in (404, 409):
            return Outcome(None, "Stale", "the Server changed while it was being scheduled")
        raise
    except Exception:
        assumed.forget(server.uid)
        raise
    k.event(ref, "Scheduled", f"Server {server.full_name} {message}")
    metrics.bound(server.metadata.creationTimestamp)
    log.info("bound %s to %s", server.full_name, host)
    return Outcome(host, "Bound", message)


def controller_status(server: Server) -> ServerStatus:
    """Every status field the controller owns on a bound Server, as they are: the base of a
    later apply that changes one of them (server-side apply removes a field its manager
    applied before and leaves out now)."""
    status = ServerStatus(
        nodeName=server.status.nodeName,
        flavor=server.status.flavor,
        conditions=_own_conditions(server),
        addresses=server.status.addresses,
        image=server.status.image,
    )
    _keep_history(server, status)
    return status


def _keep_history(server: Server, status: ServerStatus) -> None:
    """Carry what the controller wrote when it took the Server off a dead host into this
    write: server-side apply removes a field its manager applied before and leaves out now."""
    if server.status.evacuatedFrom is not None:
        status.evacuatedFrom = server.status.evacuatedFrom


def _own_conditions(
    server: Server, types: tuple[str, ...] = ("Scheduled",)
) -> list[common.Condition]:
    return [c for c in server.status.conditions if c.type in types]


TRANSIENT = frozenset({"NetworkNotReady", "NetworkDeleting"})
"""Reasons to wait that the controller itself ends soon (Reconciling); every other reason
waits for something a person or the cluster must change — a Flavor or Image made, room on a
host, quota freed — and is Stalled (kstatus: Failed) meanwhile."""


def waiting_conditions(server: Server, outcome: Outcome, generation: int) -> list[common.Condition]:
    """The controller's conditions of an unbound Server that waits: ``Scheduled=False`` with
    the reason, and kstatus's Reconciling and Stalled (what Flux and Argo CD read). The binding
    write leaves Reconciling and Stalled out, which removes them (server-side apply); the
    agent writes its own from then on."""
    stalled = outcome.reason not in TRANSIENT
    abnormal: common.ConditionStatus = "True"
    conditions = common.set_condition(
        _own_conditions(server, ("Scheduled", "Reconciling", "Stalled")),
        "Scheduled",
        "False",
        outcome.reason,
        outcome.message,
        generation,
    )
    for type_, on in (("Reconciling", not stalled), ("Stalled", stalled)):
        said = (abnormal, outcome.reason, outcome.message) if on else ("False", "Waiting", "")
        conditions = common.set_condition(conditions, type_, *said, generation)
    return conditions


def _wait(server: Server, outcome: Outcome, k: kube.Kube, defer: Defer | None = None) -> Outcome:
    """Say why the Server waits (condition + Event), unless it already says exactly that for
    the Server's current generation."""
    current = common.get_condition(server.status.conditions, "Scheduled")
    generation = server.metadata.generation
    if (
        current is not None
        and current.status == "False"
        and current.reason == outcome.reason
        and current.message == outcome.message
        and server.status.phase is Phase.BUILD
        and server.status.observedGeneration == generation
    ):
        return outcome
    # observedGeneration is the controller's until the binding (which leaves it out, so the
    # API server's default 0 stands until the agent writes its own): a Server that cannot be
    # bound is judged on this generation (kstatus: Failed), not "not observed yet".
    status = ServerStatus(
        phase=Phase.BUILD,
        observedGeneration=generation,
        conditions=waiting_conditions(server, outcome, generation),
    )
    if server.status.image is not None:
        status.image = server.status.image
    _keep_history(server, status)
    ref = ObjectRef.to(server)

    def write() -> Outcome:
        kube.retrying(lambda: k.apply_status(ref, status))
        if current is None or current.reason != outcome.reason:
            k.event(ref, outcome.reason, outcome.message, warning=True)
        return outcome

    if defer is not None:
        defer(write)
        return outcome
    return write()
