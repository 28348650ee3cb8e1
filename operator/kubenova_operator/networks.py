"""Networks in the controller: which networks a Server's NICs are on, their addresses (IPAM,
decided in the binding pass and written with the binding), and a pass over every Network and
ProviderNetwork that keeps their status right — the VNI (given once, never one in use), the
hosts that run their Servers with their tunnel and DHCP addresses (what the agents build
their flood lists and DHCP servers from), and deletion held by a finalizer while Servers
still use the network.

Plain functions and one small class over typed data; kopf stays in ``handlers``. What a pass
reads of the Servers is kept incrementally by :class:`~kubenova_operator.cluster.Cluster`
(held addresses, hosts and users per network), never by walking every Server."""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
from collections.abc import Iterator, Mapping, Sequence

from kubernetes.client.exceptions import ApiException

from kubenova_api import common, constants, kube
from kubenova_api.kube import ObjectRef
from kubenova_api.networks import (
    TENANT_MTU,
    Network,
    NetworkAttachment,
    NetworkHost,
    NetworkKind,
    NetworkStatus,
    ProviderNetwork,
    ProviderNetworkStatus,
    ServerAddress,
    SubnetSpec,
    net_key,
    tenant_gateway,
)
from kubenova_api.resources import Hypervisor, Server, ServerMigration
from kubenova_operator import ipam
from kubenova_operator.cluster import Cluster, holder_of
from kubenova_operator.scheduling import claims

log = logging.getLogger(__name__)

FINALIZER = f"{constants.PREFIX}/network"
"""Held on every Network and ProviderNetwork by the controller: deleting one that Servers still
use waits until the last of them is gone."""
DHCP_HOLDER = "dhcp/"
"""Holder prefix of a host's DHCP server address on a provider network."""


@dataclasses.dataclass(frozen=True)
class Wait:
    """Why a Server cannot be bound yet (its Scheduled condition)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One NIC of a Server, resolved to its network."""

    index: int
    kind: NetworkKind
    name: str
    key: str
    """:func:`kubenova_api.networks.net_key`."""
    subnet: ipam.Subnet
    fixed_ip: ipaddress.IPv4Address | None = None
    physnet: str | None = None
    """A provider network's physical network (the host must map it)."""

    @property
    def overlay(self) -> bool:
        return self.kind is NetworkKind.Network


def subnet_of(
    spec: SubnetSpec, gateway: str | None, reserved: frozenset[str] = frozenset()
) -> ipam.Subnet:
    """What IPAM needs of a network's spec."""
    return ipam.Subnet(
        cidr=ipaddress.IPv4Network(spec.cidr),
        gateway=ipaddress.IPv4Address(gateway) if gateway else None,
        pools=tuple(
            (ipaddress.IPv4Address(p.start), ipaddress.IPv4Address(p.end))
            for p in spec.allocationPools or ()
        ),
        reserved=frozenset(ipaddress.IPv4Address(a) for a in reserved),
    )


def resolve(
    server: Server,
    networks: Mapping[str, Network],
    providers: Mapping[str, ProviderNetwork],
    defaults: Mapping[str, Sequence[str]],
    dhcp_reserved: Mapping[str, frozenset[str]],
) -> list[Attachment] | Wait:
    """The Server's NICs in order, each on an existing, ready network — or why it waits.
    ``spec.networks`` omitted means one NIC on the namespace's default Network, when the
    namespace has one (none: no NIC, as before networks existed); an empty list, no NIC."""
    namespace = server.namespace or ""
    wanted = server.spec.networks
    later = "the Server is scheduled as soon as it is"
    if wanted is None:
        names = sorted(defaults.get(namespace, ()))
        if len(names) > 1:
            return Wait(
                "DefaultNetworkAmbiguous",
                f"namespace {namespace} has {len(names)} default Networks ({', '.join(names)}); "
                "mark one only, or list spec.networks",
            )
        wanted = [NetworkAttachment(networkRef=names[0])] if names else []
    out: list[Attachment] = []
    for index, nic in enumerate(wanted):
        fixed = ipaddress.IPv4Address(nic.fixedIP) if nic.fixedIP else None
        key = net_key(nic.kind, namespace, nic.networkRef)
        if nic.kind is NetworkKind.Network:
            net = networks.get(key)
            if net is None:
                return Wait(
                    "NetworkNotFound",
                    f"Network {nic.networkRef!r} does not exist in namespace {namespace}; "
                    f"{later} created",
                )
            if net.metadata.deleting:
                return Wait("NetworkDeleting", f"Network {nic.networkRef!r} is being deleted")
            if net.status.vni is None:
                return Wait(
                    "NetworkNotReady",
                    f"Network {nic.networkRef!r} has no VNI yet; {later} given one",
                )
            subnet = subnet_of(net.spec, tenant_gateway(net.spec))
            out.append(Attachment(index, nic.kind, nic.networkRef, key, subnet, fixed))
        else:
            pnet = providers.get(key)
            if pnet is None:
                return Wait(
                    "NetworkNotFound",
                    f"ProviderNetwork {nic.networkRef!r} does not exist; {later} created",
                )
            if pnet.metadata.deleting:
                return Wait(
                    "NetworkDeleting", f"ProviderNetwork {nic.networkRef!r} is being deleted"
                )
            subnet = subnet_of(pnet.spec, pnet.spec.gateway, dhcp_reserved.get(key, frozenset()))
            out.append(
                Attachment(
                    index, nic.kind, nic.networkRef, key, subnet, fixed, pnet.spec.physicalNetwork
                )
            )
    return out


class Layers(Mapping[ipaddress.IPv4Address, str]):
    """Several address maps read as one, the first that has a key winning (no copies: the
    bound Servers' map of a big network is read in place)."""

    def __init__(self, *layers: Mapping[ipaddress.IPv4Address, str]) -> None:
        self.layers = layers

    def __getitem__(self, key: ipaddress.IPv4Address) -> str:
        for layer in self.layers:
            if key in layer:
                return layer[key]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return any(key in layer for layer in self.layers)

    def __iter__(self) -> Iterator[ipaddress.IPv4Address]:
        seen: set[ipaddress.IPv4Address] = set()
        for layer in self.layers:
            for key in layer:
                if key not in seen:
                    seen.add(key)
                    yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Macs:
    """The MACs in use on a network, read from several sets without copying them."""

    def __init__(self, *layers: Mapping[str, int] | set[str]) -> None:
        self.layers = layers

    def __contains__(self, mac: object) -> bool:
        return any(mac in layer for layer in self.layers)


def held_on(
    network: str,
    cluster: Cluster,
    assumed: claims.Claims,
    mine: dict[ipaddress.IPv4Address, str] | None = None,
    my_macs: set[str] | None = None,
) -> ipam.Held:
    """What is taken on ``network``: bound Servers' addresses, bindings in flight, and
    ``mine`` (the other NICs of the Server being decided)."""
    return ipam.Held(
        Layers(mine or {}, assumed.held(network), cluster.held(network)),
        _Macs(my_macs or set(), assumed.macs(network), cluster.macs(network)),
    )


def allocate(
    server: Server, nics: list[Attachment], cluster: Cluster, assumed: claims.Claims
) -> list[tuple[Attachment, ipam.Lease]] | Wait:
    """An address and MAC for each NIC (decided now, in the pass; held once the binding is
    assumed), or the refusal of a fixed IP / an exhausted pool as a reason naming which."""
    out: list[tuple[Attachment, ipam.Lease]] = []
    mine: dict[str, dict[ipaddress.IPv4Address, str]] = collections.defaultdict(dict)
    my_macs: dict[str, set[str]] = collections.defaultdict(set)
    had = server.status.addresses
    for nic in nics:
        held = held_on(nic.key, cluster, assumed, mine[nic.key], my_macs[nic.key])
        if nic.index < len(had) and (had[nic.index].network, had[nic.index].kind) == (
            nic.name,
            nic.kind.value,
        ):
            # Bound once already (a Server sent back to scheduling): it keeps its address.
            old = had[nic.index]
            lease = ipam.Lease(holder_of(server.uid, nic.index), ipaddress.IPv4Address(old.ip),
                               old.mac)  # fmt: skip
            if held.by_ip.get(lease.ip, lease.holder) == lease.holder:
                mine[nic.key][lease.ip] = lease.holder
                my_macs[nic.key].add(lease.mac)
                out.append((nic, lease))
                continue
        got = ipam.allocate(
            nic.subnet,
            held,
            ipam.Request(holder_of(server.uid, nic.index), nic.fixed_ip),
            assumed.cursors.get(nic.key),
        )
        if isinstance(got, ipam.Refusal):
            message = got.message
            taken_by = held.by_ip.get(nic.fixed_ip) if nic.fixed_ip is not None else None
            if got.reason is ipam.Reason.Taken and taken_by is not None:
                message = f"{nic.fixed_ip} is already held by {describe_holder(taken_by, cluster)}"
            return Wait(
                str(got.reason), f"NIC {nic.index} on {nic.kind.value} {nic.name!r}: {message}"
            )
        if nic.fixed_ip is None:
            assumed.cursors[nic.key] = got.ip
        mine[nic.key][got.ip] = got.holder
        my_macs[nic.key].add(got.mac)
        out.append((nic, got))
    return out


def describe_holder(holder: str, cluster: Cluster) -> str:
    """A person's name for an address holder: ``Server ns/name (NIC i)`` or a host's DHCP."""
    if holder.startswith(DHCP_HOLDER):
        return f"the DHCP server of host {holder.removeprefix(DHCP_HOLDER)}"
    uid, _, index = holder.rpartition("/")
    server = cluster.by_uid(uid)
    name = server.full_name if server is not None else uid
    return f"Server {name} (NIC {index})"


def needs(
    server_networks: frozenset[str], providers: Mapping[str, ProviderNetwork]
) -> tuple[frozenset[str], bool]:
    """(physical networks, whether a tunnel is needed) a host must offer to carry a bound
    Server's networks (a migration's target)."""
    physnets = frozenset(
        providers[key].spec.physicalNetwork for key in server_networks if key in providers
    )
    return physnets, any("/" in key for key in server_networks)


def addresses_of(leases: list[tuple[Attachment, ipam.Lease]]) -> list[ServerAddress]:
    """``status.addresses`` for the leases, in NIC order."""
    return [
        ServerAddress(network=nic.name, kind=nic.kind.value, ip=str(lease.ip), mac=lease.mac)
        for nic, lease in leases
    ]


# ----------------------------------------------------------------------------- the pass


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the network pass reads (the controller's caches at the start of a pass)."""

    networks: Mapping[str, Network]
    providers: Mapping[str, ProviderNetwork]
    hypervisors: Mapping[str, Hypervisor]
    cluster: Cluster
    assumed: claims.Claims
    migrations: Sequence[ServerMigration] = ()


class NetworkPass:
    """Keeps every network's status and finalizer right; one write per network that changed."""

    def __init__(self, k: kube.Kube) -> None:
        self.kube = k
        self._vnis: dict[str, int] = {}
        """Network UID -> the VNI this controller gave it (until the index shows it)."""
        self._dhcp: dict[str, dict[str, str]] = {}
        """Provider network key -> host -> the DHCP address this controller gave it."""
        self._told: dict[str, str] = {}
        """Network UID -> the last InUse message told in an Event."""

    def dhcp_reserved(self, providers: Mapping[str, ProviderNetwork]) -> dict[str, frozenset[str]]:
        """Per provider network, every DHCP address held (in its status or being written):
        IPAM gives none of them to a Server."""
        out: dict[str, frozenset[str]] = {}
        for key, pnet in providers.items():
            have = {h.dhcpAddress for h in pnet.status.hosts if h.dhcpAddress}
            have |= set(self._dhcp.get(key, {}).values())
            if have:
                out[key] = frozenset(have)
        return out

    def run_pass(self, inputs: Inputs) -> None:
        hosts_by_net = self._hosts_by_network(inputs)
        in_use = {n.status.vni for n in inputs.networks.values() if n.status.vni is not None}
        live_uids = {n.uid for n in inputs.networks.values()}
        self._vnis = {uid: vni for uid, vni in self._vnis.items() if uid in live_uids}
        in_use |= set(self._vnis.values())
        for key, net in sorted(inputs.networks.items()):
            try:
                self._tenant(key, net, inputs, hosts_by_net.get(key, set()), in_use)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                log.debug("Network %s changed meanwhile: %s", key, exc)
        for key, pnet in sorted(inputs.providers.items()):
            try:
                self._provider(key, pnet, inputs, hosts_by_net.get(key, set()))
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                log.debug("ProviderNetwork %s changed meanwhile: %s", key, exc)

    def _hosts_by_network(self, inputs: Inputs) -> dict[str, set[str]]:
        """Per network, the hosts that run its Servers, are being bound one, or receive one by
        a migration under way (so the target is in every flood list before the move)."""
        out: dict[str, set[str]] = {}
        for key in [*inputs.networks, *inputs.providers]:
            hosts = inputs.cluster.network_hosts(key) | inputs.assumed.network_hosts(key)
            if hosts:
                out[key] = hosts
        for smig in inputs.migrations:
            target = smig.status.targetNode
            if not smig.active or not target:
                continue
            server = inputs.cluster.get((smig.namespace or "", smig.spec.serverRef))
            if server is None:
                continue
            for net in server.networks:
                out.setdefault(net, set()).add(target)
        return out

    def _users(self, key: str, inputs: Inputs) -> list[str]:
        uids = inputs.cluster.network_users(key) | inputs.assumed.network_users(key)
        names = []
        for uid in uids:
            server = inputs.cluster.by_uid(uid)
            names.append(server.full_name if server is not None else uid)
        return sorted(names)

    def _deleting(self, obj: Network | ProviderNetwork, key: str, inputs: Inputs) -> bool:
        """A network being deleted: held while Servers use it (a condition and an Event say
        which), its finalizer released once none does. Returns whether it is deleting."""
        if not obj.metadata.deleting:
            return False
        users = self._users(key, inputs)
        ref = ObjectRef.to(obj)
        if not users:
            if FINALIZER in obj.metadata.finalizers:
                self.kube.remove_finalizer(ref, FINALIZER)
                log.info("%s %s deleted: no Server uses it", obj.KIND, obj.full_name)
            self._told.pop(obj.uid, None)
            return True
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        message = (
            f"deletion waits until no Server uses it: {len(users)} still "
            f"{'does' if len(users) == 1 else 'do'} ({shown}); their guests keep their network"
        )
        if self._told.get(obj.uid) != message:
            self._told[obj.uid] = message
            self.kube.event(ref, "NetworkInUse", message, warning=True)
        return True

    def _host_entries(
        self, hosts: set[str], hypervisors: Mapping[str, Hypervisor], dhcp: Mapping[str, str]
    ) -> list[NetworkHost]:
        out = []
        for name in sorted(hosts):
            hv = hypervisors.get(name)
            tunnel = hv.status.network.tunnelAddress if hv and hv.status.network else None
            entry = NetworkHost(name=name)
            if tunnel:
                entry.tunnelAddress = tunnel
            if name in dhcp:
                entry.dhcpAddress = dhcp[name]
            out.append(entry)
        return out

    def _tenant(
        self, key: str, net: Network, inputs: Inputs, hosts: set[str], in_use: set[int]
    ) -> None:
        deleting = self._deleting(net, key, inputs)
        if deleting and not self._users(key, inputs):
            return
        if not deleting:
            net = self.kube.add_finalizer(net, FINALIZER)
        status = net.status
        vni = status.vni or self._vnis.get(net.uid)
        fresh = vni is None
        if vni is None:
            try:
                vni = ipam.allocate_vni(net.uid, in_use)
            except ipam.VniExhausted as exc:
                self._ready(net, status, "False", "VniExhausted", str(exc))
                return
            self._vnis[net.uid] = vni
            in_use.add(vni)
        want = NetworkStatus(
            vni=vni,
            mtu=TENANT_MTU,
            gateway=tenant_gateway(net.spec),
            hosts=self._host_entries(hosts, inputs.hypervisors, {}),
            conditions=self._conditions(net, status.conditions, key, inputs, f"VNI {vni}"),
        )
        want.observedGeneration = net.metadata.generation
        if (status.vni, status.mtu, status.gateway, status.hosts, status.observedGeneration) == (
            want.vni,
            want.mtu,
            want.gateway,
            want.hosts,
            want.observedGeneration,
        ) and _same_conditions(status.conditions, want.conditions):
            return
        self.kube.apply_status(
            ObjectRef.to(net), want, resource_version=net.metadata.resourceVersion
        )
        if fresh:
            self.kube.event(ObjectRef.to(net), "VniAllocated", f"VXLAN network identifier {vni}")
            log.info("Network %s: VNI %d", key, vni)

    def _provider(self, key: str, pnet: ProviderNetwork, inputs: Inputs, hosts: set[str]) -> None:
        deleting = self._deleting(pnet, key, inputs)
        if deleting and not self._users(key, inputs):
            self._dhcp.pop(key, None)
            return
        if not deleting:
            pnet = self.kube.add_finalizer(pnet, FINALIZER)
        status = pnet.status
        dhcp = self._dhcp_addresses(key, pnet, hosts, inputs) if pnet.spec.dhcp else {}
        want = ProviderNetworkStatus(
            hosts=self._host_entries(hosts, inputs.hypervisors, dhcp),
            conditions=self._conditions(
                pnet,
                status.conditions,
                key,
                inputs,
                f"physical network {pnet.spec.physicalNetwork}",
            ),
        )
        want.observedGeneration = pnet.metadata.generation
        if (
            status.hosts == want.hosts
            and status.observedGeneration == want.observedGeneration
            and _same_conditions(status.conditions, want.conditions)
        ):
            return
        self.kube.apply_status(
            ObjectRef.to(pnet), want, resource_version=pnet.metadata.resourceVersion
        )

    def _dhcp_addresses(
        self, key: str, pnet: ProviderNetwork, hosts: set[str], inputs: Inputs
    ) -> dict[str, str]:
        """A DHCP server address for each host that runs the network's Servers: the one it
        has, else a free one of the subnet (IPAM, so no Server ever gets it)."""
        have = {h.name: h.dhcpAddress for h in pnet.status.hosts if h.dhcpAddress}
        cache = self._dhcp.setdefault(key, {})
        out: dict[str, str] = {}
        for host in sorted(hosts):
            address = have.get(host) or cache.get(host)
            if address is None:
                taken = {
                    ipaddress.IPv4Address(a)
                    for a in [*have.values(), *cache.values(), *out.values()]
                }
                subnet = subnet_of(pnet.spec, pnet.spec.gateway, frozenset(map(str, taken)))
                got = ipam.allocate(
                    subnet,
                    held_on(key, inputs.cluster, inputs.assumed),
                    ipam.Request(DHCP_HOLDER + host),
                )
                if isinstance(got, ipam.Refusal):
                    log.warning("no DHCP address for %s on %s: %s", host, key, got.message)
                    continue
                address = str(got.ip)
            out[host] = address
        # Kept until the status shows the host gone: an address is never handed out twice.
        self._dhcp[key] = {h: a for h, a in {**cache, **out}.items() if h in out or h in have}
        return out

    def _conditions(
        self,
        obj: Network | ProviderNetwork,
        current: list[common.Condition],
        key: str,
        inputs: Inputs,
        what: str,
    ) -> list[common.Condition]:
        gen = obj.metadata.generation
        current = [c for c in current if c.type != "Stalled"]  # only while no VNI is left
        if obj.metadata.deleting:
            message = self._told.get(obj.uid, "deletion waits until no Server uses it")
            return common.set_condition(current, "Ready", "False", "InUse", message, gen)
        return common.set_condition(current, "Ready", "True", "Ready", what, gen)

    def _ready(
        self,
        net: Network,
        status: NetworkStatus,
        value: common.ConditionStatus,
        reason: str,
        message: str,
    ) -> None:
        gen = net.metadata.generation
        conditions = common.set_condition(status.conditions, "Ready", value, reason, message, gen)
        if value == "False":
            # kstatus's Stalled (Flux and Argo CD show Failed): kubenova cannot do it as it is.
            conditions = common.set_condition(conditions, "Stalled", "True", reason, message, gen)
        if _same_conditions(status.conditions, conditions) and status.observedGeneration == gen:
            return
        self.kube.apply_status(
            ObjectRef.to(net),
            NetworkStatus(conditions=conditions, observedGeneration=gen),
            resource_version=net.metadata.resourceVersion,
        )
        self.kube.event(ObjectRef.to(net), reason, message, warning=value != "True")


def _same_conditions(old: list[common.Condition], new: list[common.Condition]) -> bool:
    return len(old) == len(new) and all(c.same(common.get_condition(old, c.type)) for c in new)
