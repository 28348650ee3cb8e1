"""Claims: what each host has promised to Servers. Built from the bound Servers the API server
reports, plus bindings this controller has written but not yet seen come back (an
"assume" cache, as kube-scheduler keeps), so a burst never over-commits a host."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from kubenova_operator.scheduling.hosts import Resources


@dataclasses.dataclass(frozen=True)
class Claim:
    uid: str
    host: str
    resources: Resources
    group: str | None = None
    """``namespace/name`` of the Server's ServerGroup, if it has one."""


class Claims:
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

    def per_host(self, observed: Iterable[Claim], alive_uids: set[str]) -> dict[str, Resources]:
        """Claimed resources per host: the observed claims plus the assumed ones not yet
        observed. An assumed claim whose Server no longer exists is dropped."""
        totals: dict[str, Resources] = {}
        seen: set[str] = set()
        for claim in observed:
            seen.add(claim.uid)
            totals[claim.host] = totals.get(claim.host, Resources()) + claim.resources
            assumed = self._assumed.get(claim.uid)
            if assumed is not None and assumed.host == claim.host:
                del self._assumed[claim.uid]
        for uid, claim in list(self._assumed.items()):
            if uid in seen:
                continue
            if uid not in alive_uids:
                del self._assumed[uid]
                continue
            totals[claim.host] = totals.get(claim.host, Resources()) + claim.resources
        return totals
