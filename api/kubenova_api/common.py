"""Pieces every resource shares: the base model, conditions, object metadata."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiModel(BaseModel):
    """Base of every kubenova model: unknown fields are errors, fields may be set by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it (aliases, no unset fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(BaseModel):
    """Base of status models: tolerant of fields written by a newer component."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """A Kubernetes-style condition, so that ``kubectl wait --for=condition=X`` works."""

    type: str = Field(description="Type of the condition, e.g. Scheduled or Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", description="One CamelCase word a program can match on, e.g. FlavorNotFound."
    )
    message: str = Field(default="", description="What happened, for a person.")
    lastTransitionTime: dt.datetime | None = Field(
        default=None, description="When the status of this condition last changed."
    )
    observedGeneration: int | None = Field(
        default=None, description="The .metadata.generation this condition was written for."
    )


def now() -> dt.datetime:
    """The current time, timezone-aware, rounded to the second as Kubernetes stores it."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def timestamp() -> str:
    """:func:`now` as the RFC 3339 text Kubernetes writes (``2026-11-29T09:00:00Z``)."""
    return now().isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> dt.datetime | None:
    """A timestamp read from an object (RFC 3339, ``Z`` for UTC); None when absent."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; its transition time moves only when its status changes."""
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.get("status") != status
        when = timestamp() if changed else cond.get("lastTransitionTime")
        out.append(_condition(type_, status, reason, message, when, generation))
    if not found:
        when = timestamp()
        out.append(_condition(type_, status, reason, message, when, generation))
    return out


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    when: Any,
    generation: int | None,
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None
