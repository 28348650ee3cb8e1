"""Claims: what each host has promised to Servers. The bound Servers the API server reports
are counted incrementally by :class:`kubenova_operator.cluster.Cluster`; this module keeps the
bindings this controller has written but not yet seen come back (an "assume" cache, as
kube-scheduler keeps), so a burst never over-commits a host."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from kubenova_operator.scheduling.hosts import Resources


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    uid: str
    host: str
    resources: Resources
    group: str | None = None
    """``namespace/name`` of the Server's ServerGroup, if it has one."""
    namespace: str = ""
    """The Server's namespace (its project: what its quota counts)."""


class Claims:
    """Bindings written by this controller and not yet observed."""

    def __init__(self) -> None:
        self._assumed: dict[str, Claim] = {}

    def assume(self, claim: Claim) -> None:
        """Record a binding just written, until the API server's view includes it."""
        self._assumed[claim.uid] = claim

    def assumed_claims(self) -> list[Claim]:
        return list(self._assumed.values())

    def is_assumed(self, uid: str) -> bool:
        return uid in self._assumed

    def forget(self, uid: str) -> None:
        self._assumed.pop(uid, None)

    def settle(self, bound_to: Callable[[str], str | None], alive: Callable[[str], bool]) -> None:
        """Drop the assumptions the observed state now shows (the Server is bound where it
        was assumed) and those whose Server no longer exists. Costs the number of bindings in
        flight, not the number of Servers."""
        for uid, claim in list(self._assumed.items()):
            if bound_to(uid) == claim.host or not alive(uid):
                del self._assumed[uid]

    def per_host(self) -> dict[str, Resources]:
        """What the assumed bindings claim on each host."""
        totals: dict[str, Resources] = {}
        for claim in self._assumed.values():
            totals[claim.host] = totals.get(claim.host, Resources()) + claim.resources
        return totals
