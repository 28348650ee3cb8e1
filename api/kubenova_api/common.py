"""Pieces every resource shares: the base models, object metadata, conditions.

Objects are parsed into these models where they enter a component (an informer, a kopf
handler, a GET) and passed on as models, so mypy checks every field the code reads; they are
serialised again only at the edge, for a server-side apply.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiModel(BaseModel):
    """Base of every spec model: fields may be set by name.

    Unknown fields are ignored when an object is read (a newer CRD may carry fields an older
    component does not know: the API server already pruned anything its schema does not
    allow), and the generated schema still lists exactly the declared fields."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it (aliases, no unset fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(BaseModel):
    """Base of status models: tolerant of fields written by a newer component."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_apply(self) -> dict[str, Any]:
        """Only the top-level fields set on this instance, each whole: what one writer owns in
        a server-side apply (a field left unset is not claimed, so another writer's value is
        not touched). Nested objects are sent complete — an empty object in an apply would be
        stored as null."""
        return self.model_dump(
            mode="json", by_alias=True, include=set(self.model_fields_set), exclude_none=True
        )


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

    def same(self, other: Condition | None) -> bool:
        """Whether ``other`` says the same (the transition time aside)."""
        return other is not None and (
            self.status,
            self.reason,
            self.message,
            self.observedGeneration,
        ) == (other.status, other.reason, other.message, other.observedGeneration)


class ObjectMeta(StatusModel):
    """The part of ``metadata`` kubenova reads."""

    name: str = ""
    generateName: str | None = None
    namespace: str | None = None
    uid: str = ""
    resourceVersion: str = ""
    generation: int = 0
    creationTimestamp: dt.datetime | None = None
    deletionTimestamp: dt.datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)

    @property
    def deleting(self) -> bool:
        return self.deletionTimestamp is not None


class KubeObject(BaseModel):
    """A whole object of one kind: metadata, spec and status as models.

    ``KIND`` and ``PLURAL`` name it for API calls; subclasses narrow ``spec`` and ``status``.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Self:
        """Validate a body as the API server returned it (a dict, or a kopf ``Body``)."""
        return cls.model_validate(dict(body))

    @classmethod
    def parse_or_none(cls, body: Mapping[str, Any]) -> Self | None:
        """:meth:`parse`, or None and a log line naming the object when the body does not fit
        the model (where objects arrive from a watch: one bad object is skipped, not fatal)."""
        try:
            return cls.parse(body)
        except ValidationError as exc:
            meta = body.get("metadata") or {}
            logging.getLogger(cls.__module__).error(  # noqa: TRY400 - the error says it all
                "ignoring %s %s/%s that does not match its model: %s",
                cls.KIND,
                meta.get("namespace") or "",
                meta.get("name"),
                exc,
            )
            return None

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name); the namespace is "" for cluster-scoped kinds."""
        return self.metadata.namespace or "", self.metadata.name

    @property
    def uid(self) -> str:
        return self.metadata.uid

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def full_name(self) -> str:
        ns = self.metadata.namespace
        return f"{ns}/{self.metadata.name}" if ns else self.metadata.name


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


def get_condition(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    """The condition of that type, or None."""
    for cond in conditions or ():
        if cond.type == type_:
            return cond
    return None


def set_condition(
    conditions: Iterable[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None = None,
) -> list[Condition]:
    """Conditions with ``type_`` set; its transition time moves only when its status changes."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        when = now() if cond.status != status else cond.lastTransitionTime
        out.append(_condition(type_, status, reason, message, when, generation))
    if not found:
        out.append(_condition(type_, status, reason, message, now(), generation))
    return out


def _condition(
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    when: dt.datetime | None,
    generation: int | None,
) -> Condition:
    cond = Condition(
        type=type_, status=status, reason=reason, message=message, lastTransitionTime=when
    )
    if generation is not None:
        cond.observedGeneration = generation
    return cond
