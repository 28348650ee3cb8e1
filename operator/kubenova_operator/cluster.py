"""What the controller knows of every Server, kept up to date incrementally.

The controller's Server watch (:mod:`kubenova_operator.servers`) holds a compact
:class:`ServerSummary` per Server (every one listed before the first pass, so a restarted
controller knows every claim before it binds anything). Each event marks its Server dirty;
before a pass, :meth:`Cluster.sync` folds only the dirty Servers into the aggregates the passes
read — claims per host, members of each server group per host, the Servers on each host, the
Servers waiting for a resize or for a new image to be pinned (a rebuild), and per network the
addresses and MACs held, the hosts that run its Servers and the Servers that use it. A pass
therefore costs what changed since the last one, never the number of Servers already bound."""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import threading
from collections.abc import Mapping

from kubenova_api import constants
from kubenova_api.networks import NetworkKind, net_key
from kubenova_api.resources import Phase, Server
from kubenova_operator.scheduling.claims import Claim
from kubenova_operator.scheduling.hosts import Resources

Key = tuple[str, str]
"""(namespace, name)"""


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """One NIC's address: the network (:func:`kubenova_api.networks.net_key`), IP and MAC."""

    network: str
    ip: ipaddress.IPv4Address
    mac: str


def holder_of(uid: str, index: int) -> str:
    """Who holds a NIC's address: ``<server uid>/<nic index>`` (IPAM's holder)."""
    return f"{uid}/{index}"


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSummary:
    """What the controller's passes need to know of a Server (a few hundred bytes each)."""

    namespace: str
    name: str
    uid: str
    node: str | None
    phase: Phase | None
    flavor: Resources | None
    """The size it runs with (``status.flavor``), once bound."""
    flavor_name: str | None
    flavor_ref: str
    image_ref: str
    group_ref: str | None
    zone: str | None
    deleting: bool
    held: bool = False
    """The agents' finalizer is on it (given at creation by the admission policy
    ``deploy/admission/domain-finalizer.yaml``, else by the agent that runs it)."""
    addresses: tuple[Address, ...] = ()
    """Its NICs' addresses, in order (given at binding, kept for its life)."""
    pinned_image: str | None = None
    """The name of the Image whose bits are pinned in ``status.image`` (None: none pinned)."""

    @classmethod
    def of(cls, server: Server) -> ServerSummary:
        spec, status = server.spec, server.status
        namespace = server.namespace or ""
        return cls(
            namespace=server.namespace or "",
            name=server.name,
            uid=server.uid,
            node=status.nodeName,
            phase=status.phase,
            flavor=Resources.of(status.flavor) if status.flavor is not None else None,
            flavor_name=status.flavor.name if status.flavor is not None else None,
            flavor_ref=spec.flavorRef,
            image_ref=spec.imageRef,
            group_ref=spec.serverGroupRef,
            zone=spec.availabilityZone,
            deleting=server.metadata.deleting,
            held=constants.FINALIZER_DOMAIN in server.metadata.finalizers,
            addresses=tuple(
                Address(
                    net_key(NetworkKind(a.kind), namespace, a.network),
                    ipaddress.IPv4Address(a.ip),
                    a.mac,
                )
                for a in status.addresses
            ),
            pinned_image=status.image.name if status.image is not None else None,
        )

    @property
    def networks(self) -> frozenset[str]:
        return frozenset(a.network for a in self.addresses)

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def group(self) -> str | None:
        """``namespace/name`` of its ServerGroup."""
        return f"{self.namespace}/{self.group_ref}" if self.group_ref else None

    @property
    def claim(self) -> Claim | None:
        """What it holds on its host (bound Servers only)."""
        if not self.node or self.flavor is None:
            return None
        return Claim(self.uid, self.node, self.flavor, self.group)

    @property
    def stranded(self) -> bool:
        """Being deleted, unbound, and still held by the agents' finalizer: no agent will
        remove it (the controller does, :func:`kubenova_operator.fencing.release_unbound`)."""
        return self.deleting and not self.node and self.held

    @property
    def wants_resize(self) -> bool:
        """Bound, and its flavorRef names another flavor than the one it runs with."""
        return bool(
            self.node
            and not self.deleting
            and self.flavor_name
            and self.flavor_ref != self.flavor_name
        )

    @property
    def wants_repin(self) -> bool:
        """Bound, and its imageRef names another Image than the one pinned in its status: it
        is asked to be rebuilt from that Image (admission lets imageRef change only so)."""
        return bool(
            self.node
            and not self.deleting
            and self.pinned_image
            and self.image_ref != self.pinned_image
        )


class Cluster:
    """Aggregates over every Server, changed one Server at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._synced = False
        self._by_uid: dict[str, ServerSummary] = {}
        self._by_key: dict[Key, str] = {}
        self._claimed: dict[str, Resources] = {}
        self._groups: dict[str, collections.Counter[str]] = {}
        self._on_host: dict[str, set[str]] = {}
        self._resizing: set[str] = set()
        self._repinning: set[str] = set()
        self._stranded: set[str] = set()
        self._held: dict[str, dict[ipaddress.IPv4Address, str]] = {}
        self._macs: dict[str, collections.Counter[str]] = {}
        self._net_hosts: dict[str, collections.Counter[str]] = {}
        self._net_users: dict[str, set[str]] = {}
        self._used: dict[str, tuple[int, Resources]] = {}
        self._phases: collections.Counter[str] = collections.Counter()

    def phases(self) -> dict[str, int]:
        """How many Servers are in each phase (``None``: no status yet), for the metrics."""
        for _ in range(3):
            try:
                return {phase: n for phase, n in self._phases.items() if n > 0}
            except RuntimeError:  # a pass folded a new phase in meanwhile
                continue
        return {}

    # ------------------------------------------------------------------ changes
    def touch(self, uid: str) -> None:
        """The Server ``uid`` changed (or went); fold it in at the next :meth:`sync`."""
        with self._lock:
            self._dirty.add(uid)

    def sync(self, summaries: Mapping[str, ServerSummary]) -> int:
        """Fold the changes into the aggregates from ``summaries`` (uid -> the Server's
        summary now; a uid missing is a Server gone): everything the first time, afterwards
        only the Servers touched since. Returns how many Servers were looked at."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            first, self._synced = not self._synced, True
        uids = set(summaries) | set(self._by_uid) if first else dirty
        for uid in uids:
            self._apply(uid, summaries.get(uid))
        return len(uids)

    def _apply(self, uid: str, new: ServerSummary | None) -> None:
        old = self._by_uid.pop(uid, None)
        if old is not None:
            self._by_key.pop(old.key, None)
            self._count(old, -1)
        if new is None:
            return
        self._by_uid[uid] = new
        self._by_key[new.key] = uid
        self._count(new, +1)

    def _count(self, server: ServerSummary, sign: int) -> None:
        self._phases[server.phase.value if server.phase is not None else "None"] += sign
        claim = server.claim
        if claim is not None:
            count, used = self._used.get(server.namespace, (0, Resources()))
            if sign > 0:
                self._used[server.namespace] = (count + 1, used + claim.resources)
            else:
                self._used[server.namespace] = (count - 1, used - claim.resources)
            current = self._claimed.get(claim.host, Resources())
            total = current + claim.resources if sign > 0 else current - claim.resources
            self._claimed[claim.host] = total
            if claim.group is not None:
                hosts = self._groups.setdefault(claim.group, collections.Counter())
                hosts[claim.host] += sign
                if hosts[claim.host] <= 0:
                    del hosts[claim.host]
        if server.node:
            on = self._on_host.setdefault(server.node, set())
            if sign > 0:
                on.add(server.uid)
            else:
                on.discard(server.uid)
        if server.wants_resize and sign > 0:
            self._resizing.add(server.uid)
        else:
            self._resizing.discard(server.uid)
        if server.wants_repin and sign > 0:
            self._repinning.add(server.uid)
        else:
            self._repinning.discard(server.uid)
        if server.stranded and sign > 0:
            self._stranded.add(server.uid)
        else:
            self._stranded.discard(server.uid)
        self._count_addresses(server, sign)

    def _count_addresses(self, server: ServerSummary, sign: int) -> None:
        for index, address in enumerate(server.addresses):
            net = address.network
            holder = holder_of(server.uid, index)
            held = self._held.setdefault(net, {})
            macs = self._macs.setdefault(net, collections.Counter())
            if sign > 0:
                held[address.ip] = holder
                macs[address.mac] += 1
            else:
                if held.get(address.ip) == holder:
                    del held[address.ip]
                macs[address.mac] -= 1
                if macs[address.mac] <= 0:
                    del macs[address.mac]
        for net in server.networks:
            users = self._net_users.setdefault(net, set())
            hosts = self._net_hosts.setdefault(net, collections.Counter())
            if sign > 0:
                users.add(server.uid)
            else:
                users.discard(server.uid)
            if server.node:
                hosts[server.node] += sign
                if hosts[server.node] <= 0:
                    del hosts[server.node]

    # ------------------------------------------------------------------ reads
    def get(self, key: Key) -> ServerSummary | None:
        uid = self._by_key.get(key)
        return self._by_uid.get(uid) if uid is not None else None

    def by_uid(self, uid: str) -> ServerSummary | None:
        return self._by_uid.get(uid)

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def __len__(self) -> int:
        return len(self._by_uid)

    def bound_to(self, uid: str) -> str | None:
        server = self._by_uid.get(uid)
        return server.node if server is not None else None

    def claimed(self) -> dict[str, Resources]:
        """What bound Servers claim on each host (a copy; as many entries as hosts)."""
        return dict(self._claimed)

    def namespace_usage(self, namespace: str) -> tuple[int, Resources]:
        """How many bound Servers ``namespace`` has, and what they hold."""
        return self._used.get(namespace, (0, Resources()))

    def group_hosts(self, group: str) -> dict[str, int]:
        """Host -> how many bound members of ``group`` it has."""
        return dict(self._groups.get(group, {}))

    def on_host(self, host: str) -> list[ServerSummary]:
        """The Servers bound to ``host``, by namespace and name."""
        servers = [self._by_uid[uid] for uid in self._on_host.get(host, ())]
        return sorted(servers, key=lambda s: s.key)

    def held(self, network: str) -> Mapping[ipaddress.IPv4Address, str]:
        """Address -> holder (``uid/index``) on ``network``: read-only, not a copy."""
        return self._held.get(network, {})

    def macs(self, network: str) -> Mapping[str, int]:
        """The MACs in use on ``network`` (read-only, not a copy)."""
        return self._macs.get(network, {})

    def network_hosts(self, network: str) -> set[str]:
        """Hosts that run (are bound) Servers of ``network``."""
        return set(self._net_hosts.get(network, ()))

    def network_users(self, network: str) -> set[str]:
        """UIDs of the Servers with a NIC on ``network`` (deleting ones included: they hold
        their addresses until they are gone)."""
        return set(self._net_users.get(network, ()))

    def resizing(self) -> list[ServerSummary]:
        """Bound Servers whose flavorRef names another flavor than the one they run with."""
        return [self._by_uid[uid] for uid in self._resizing if uid in self._by_uid]

    def stranded(self) -> list[ServerSummary]:
        """Deleting Servers no host holds that still carry the agents' finalizer."""
        return [self._by_uid[uid] for uid in self._stranded if uid in self._by_uid]

    def repinning(self) -> list[ServerSummary]:
        """Bound Servers whose imageRef names another Image than the one pinned (rebuilds)."""
        return [self._by_uid[uid] for uid in self._repinning if uid in self._by_uid]
