"""Compute API microversions, negotiated as Nova does.

A request names its version in ``OpenStack-API-Version: compute X.Y`` (the header may carry
several services, comma separated, and may repeat) or in the older
``X-OpenStack-Nova-API-Version: X.Y``; the new header wins when both are present. No header
means 2.1, ``latest`` the maximum. A version that does not parse is a 400, one outside
[MIN, MAX] a 406. Answers echo the version in both headers and say ``Vary`` on both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from kubenova_openstack.faults import Fault

HEADER = "OpenStack-API-Version"
LEGACY_HEADER = "X-OpenStack-Nova-API-Version"
_FORMAT = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


@dataclasses.dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _FORMAT.match(text.strip())
        if match is None:
            raise Fault(
                400,
                f"API Version String {text} is of invalid format. Must be of format "
                "MajorNum.MinorNum.",
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, text: str) -> bool:
        return self >= Version.parse(text)

    def at_most(self, text: str) -> bool:
        return self <= Version.parse(text)


MIN = Version(2, 1)
MAX = Version(2, 88)
DEFAULT = MIN


def requested(new: Iterable[str], legacy: Iterable[str]) -> Version:
    """The version a request asks for, from the values of its version headers."""
    text = _from_new_header(new)
    if text is None:
        values = [v.strip() for v in legacy if v.strip()]
        text = values[-1] if values else None
    if text is None:
        return DEFAULT
    if text.lower() == "latest":
        return MAX
    version = Version.parse(text)
    if not MIN <= version <= MAX:
        raise Fault(
            406,
            f"Version {version} is not supported by the API. Minimum is {MIN} and maximum "
            f"is {MAX}.",
        )
    return version


def _from_new_header(values: Iterable[str]) -> str | None:
    found = None
    for value in values:
        for part in value.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() == "compute" and version.strip():
                found = version.strip()
    return found
