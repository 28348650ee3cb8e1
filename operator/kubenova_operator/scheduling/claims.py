"""Claims: what each host has promised to Servers. The bound Servers the API server reports
are counted incrementally by :class:`kubenova_operator.cluster.Cluster`; this module keeps the
bindings this controller has written but not yet seen come back (an "assume" cache, as
kube-scheduler keeps), so a burst never over-commits a host."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Callable, Mapping

from kubenova_operator.scheduling.hosts import Resources


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    uid: str
    host: str
    resources: Resources
    group: str | None = None
    """``namespace/name`` of the Server's ServerGroup, if it has one."""
    addresses: tuple[tuple[str, ipaddress.IPv4Address, str], ...] = ()
    """(network, IP, MAC) of each NIC, in order: held with the binding."""
    namespace: str = ""
    """The Server's namespace (its project: what its quota counts)."""


class Claims:
    """Bindings written by this controller and not yet observed.

    A pass assumes claims while the writers of earlier passes forget the ones the API server
    refused, so every change and every walk over them holds the lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._assumed: dict[str, Claim] = {}
        self._held: dict[str, dict[ipaddress.IPv4Address, str]] = {}
        self._macs: dict[str, set[str]] = {}
        self.cursors: dict[str, ipaddress.IPv4Address] = {}
        """Per network, the address last given: the next search starts after it (IPAM)."""

    def assume(self, claim: Claim) -> None:
        """Record a binding just written, until the API server's view includes it."""
        with self._lock:
            self.forget(claim.uid)
            self._assumed[claim.uid] = claim
            for index, (net, ip, mac) in enumerate(claim.addresses):
                self._held.setdefault(net, {})[ip] = f"{claim.uid}/{index}"
                self._macs.setdefault(net, set()).add(mac)

    def held(self, network: str) -> Mapping[ipaddress.IPv4Address, str]:
        """Addresses on ``network`` held by bindings in flight (a copy)."""
        with self._lock:
            return dict(self._held.get(network, {}))

    def macs(self, network: str) -> set[str]:
        with self._lock:
            return set(self._macs.get(network, set()))

    def network_hosts(self, network: str) -> set[str]:
        """Hosts that Servers of ``network`` are being bound to."""
        return {c.host for c in self.assumed_claims() if any(a[0] == network for a in c.addresses)}

    def network_users(self, network: str) -> set[str]:
        return {c.uid for c in self.assumed_claims() if any(a[0] == network for a in c.addresses)}

    def assumed_claims(self) -> list[Claim]:
        with self._lock:
            return list(self._assumed.values())

    def is_assumed(self, uid: str) -> bool:
        return uid in self._assumed

    def forget(self, uid: str) -> None:
        with self._lock:
            claim = self._assumed.pop(uid, None)
            if claim is None:
                return
            for index, (net, ip, mac) in enumerate(claim.addresses):
                held = self._held.get(net, {})
                if held.get(ip) == f"{uid}/{index}":
                    del held[ip]
                self._macs.get(net, set()).discard(mac)

    def settle(self, bound_to: Callable[[str], str | None], alive: Callable[[str], bool]) -> None:
        """Drop the assumptions the observed state now shows (the Server is bound where it
        was assumed) and those whose Server no longer exists. Costs the number of bindings in
        flight, not the number of Servers."""
        for claim in self.assumed_claims():
            if bound_to(claim.uid) == claim.host or not alive(claim.uid):
                self.forget(claim.uid)

    def per_host(self) -> dict[str, Resources]:
        """What the assumed bindings claim on each host."""
        totals: dict[str, Resources] = {}
        for claim in self.assumed_claims():
            totals[claim.host] = totals.get(claim.host, Resources()) + claim.resources
        return totals
