"""Request bodies, checked as Nova's JSON schemas check them before anything is done.

A value of the wrong type, out of range, or a key Nova's schema for the requested microversion
does not know is a 400 that names the field (Nova's own wording: ``Invalid input for
field/attribute …``, ``Additional properties are not allowed (… was unexpected)``), never a 500
and never a key dropped in silence. The models are pydantic, strict: ``"1"`` is no integer and
``true`` no string, except where Nova's schema itself takes both.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)

from kubenova_openstack import microversion
from kubenova_openstack.faults import Fault

Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Short = Annotated[str, StringConstraints(max_length=255)]
Digits = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]
#: Nova's ``positive_integer``: an integer, or a string of digits, at least 1.
Count = Annotated[int, Field(ge=1)] | Digits


def _address(version: int) -> AfterValidator:
    """Nova's ``accessIPv4`` / ``accessIPv6``: an address of that family, written as such."""

    def check(text: str) -> str:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise ValueError(f"'{text}' is not a 'ipv{version}'") from exc
        if address.version != version:
            raise ValueError(f"'{text}' is not a 'ipv{version}'")
        return str(address)

    return AfterValidator(check)


AccessIPv4 = Annotated[str, _address(4)]
AccessIPv6 = Annotated[str, _address(6)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class NetworkRequest(Body):
    """One entry of ``networks``: a network by id, or a port (kubenova has none)."""

    uuid: Name | None = None
    port: Name | None = None
    fixed_ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    tag: Annotated[str, StringConstraints(max_length=60)] | None = None


class File(Body):
    path: Name
    contents: str = ""


class SecurityGroup(Body):
    name: Name


class BlockDevice(BaseModel):
    """A block device mapping: only what says whether it is more than the image itself."""

    model_config = ConfigDict(extra="allow")

    source_type: str | None = None
    destination_type: str | None = None
    uuid: str | None = None


class ServerCreate(Body):
    """``server`` of ``POST /servers`` (Nova's ``base_create`` and its microversions)."""

    name: Name
    imageRef: Annotated[str, StringConstraints(max_length=255)] | None = None
    flavorRef: Annotated[str, StringConstraints(min_length=1, max_length=255)] | int
    adminPass: str | None = None
    metadata: dict[Name, Short] | None = None
    networks: list[NetworkRequest] | Literal["auto", "none"] | None = None
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(default=None, alias="OS-DCF:diskConfig")
    accessIPv4: AccessIPv4 | None = None
    accessIPv6: AccessIPv6 | None = None
    personality: list[File] | None = None
    user_data: Annotated[str, StringConstraints(max_length=65535)] | None = None
    availability_zone: Name | None = None
    block_device_mapping: list[BlockDevice] | None = None
    block_device_mapping_v2: list[BlockDevice] | None = None
    security_groups: list[SecurityGroup] | None = None
    config_drive: bool | str | None = None
    key_name: Name | None = None
    min_count: Count | None = None
    max_count: Count | None = None
    return_reservation_id: bool | None = None
    description: Short | None = None
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=60)]] | None = None
    trusted_image_certificates: list[str] | None = None
    host: Name | None = None
    hypervisor_hostname: Name | None = None


class CreateServer(Body):
    server: ServerCreate
    hints: dict[str, Any] | None = Field(default=None, alias="os:scheduler_hints")
    legacy_hints: dict[str, Any] | None = Field(default=None, alias="OS-SCH-HNT:scheduler_hints")


class ServerUpdate(Body):
    """``server`` of ``PUT /servers/{id}``."""

    name: Name | None = None
    accessIPv4: AccessIPv4 | None = None
    accessIPv6: AccessIPv6 | None = None
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(default=None, alias="OS-DCF:diskConfig")
    description: Short | None = None


class UpdateServer(Body):
    server: ServerUpdate


class Rebuild(Body):
    """``rebuild`` of ``POST /servers/{id}/action``."""

    imageRef: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    name: Name | None = None
    metadata: dict[Name, Short] | None = None
    adminPass: str | None = None
    accessIPv4: AccessIPv4 | None = None
    accessIPv6: AccessIPv6 | None = None
    disk_config: Literal["AUTO", "MANUAL"] | None = Field(default=None, alias="OS-DCF:diskConfig")
    preserve_ephemeral: bool | None = None
    personality: list[File] | None = None
    description: Short | None = None
    key_name: Name | None = None
    user_data: Annotated[str, StringConstraints(max_length=65535)] | None = None
    trusted_image_certificates: list[str] | None = None


#: Keys of ``server`` that only exist from a microversion on (Nova's schema before it has
#: ``additionalProperties: false`` and refuses them) and, for ``personality``, up to one.
SINCE = {
    "description": "2.19",
    "tags": "2.52",
    "trusted_image_certificates": "2.63",
    "host": "2.74",
    "hypervisor_hostname": "2.74",
}
UNTIL = {"personality": "2.56"}
UPDATE_SINCE = {"description": "2.19"}
REBUILD_SINCE = {
    "description": "2.19",
    "key_name": "2.54",
    "user_data": "2.57",
    "trusted_image_certificates": "2.63",
}


def _quota_limit(value: int | str) -> int:
    number = int(value)
    if number < -1:
        raise ValueError(f"{number} is less than the minimum of -1")
    return number


#: Nova's quota value: an integer or a string of one, -1 (no limit) or more.
QuotaLimit = Annotated[
    Annotated[int, Field(le=2**31 - 1)]
    | Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,10}$")],
    AfterValidator(_quota_limit),
]
#: Nova's ``parameter_types.boolean``: a JSON boolean or one of its words for it.
Boolean = bool | Literal["True", "true", "TRUE", "False", "false", "FALSE", "1", "0", "yes", "no"]


@functools.cache
def _quota_set_model(keys: tuple[str, ...]) -> type[Body]:
    """``PUT /os-quota-sets/{id}``'s body for the quotas a microversion has."""
    quota_set = create_model(  # type: ignore[call-overload]
        "QuotaSet",
        __base__=Body,
        force=(Boolean | None, None),
        **{key: (QuotaLimit | None, None) for key in keys},
    )
    model: type[Body] = create_model("UpdateQuotaSet", __base__=Body, quota_set=(quota_set, ...))
    return model


def quota_set(data: Any, keys: list[str]) -> dict[str, int]:
    """The quotas asked for by the body of ``PUT /os-quota-sets/{id}`` (``keys``: those the
    requested microversion has), each a number; ``force`` is left out."""
    body = parse(_quota_set_model(tuple(keys)), data)
    asked: BaseModel = body.quota_set  # type: ignore[attr-defined]
    return {k: v for k, v in asked.model_dump(exclude_unset=True).items() if k != "force"}


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or the 400 Nova answers for the first thing wrong in it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Fault(400, _message(exc)) from exc


#: A step of an error's location that names a member of a union, not a key of the body.
_UNION_TAG = re.compile(r"^(constrained-\w+|\w+\[.*\]|int|str|bool|dict|list)$")


def _message(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [str(p) for p in error["loc"] if not _UNION_TAG.match(str(p))]
    where = ".".join(loc[1:] if len(loc) > 1 and loc[0] in ("server", "quota_set") else loc)
    if error["type"] == "extra_forbidden":
        return f"Additional properties are not allowed ('{error['loc'][-1]}' was unexpected)"
    if error["type"] == "missing":
        return f"Invalid input for field/attribute {where}. '{error['loc'][-1]}' is required"
    value = error.get("input")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    why = error["msg"].removeprefix("Value error, ")  # a check of ours says it all
    return f"Invalid input for field/attribute {where}. Value: {shown}. {why}"


def create_server(data: Any, version: microversion.Version) -> CreateServer:
    """The body of ``POST /servers`` at ``version``."""
    if not isinstance(data, dict) or not isinstance(data.get("server"), dict):
        raise Fault(400, "Invalid input for field/attribute server.")
    body = parse(CreateServer, data)
    _in_version(body.server, version, SINCE, UNTIL)
    return body


def update_server(data: Any, version: microversion.Version) -> ServerUpdate:
    """The body of ``PUT /servers/{id}`` at ``version``."""
    if not isinstance(data, dict) or not isinstance(data.get("server"), dict):
        raise Fault(400, "Invalid input for field/attribute server.")
    body = parse(UpdateServer, data)
    _in_version(body.server, version, UPDATE_SINCE, {})
    return body.server


def rebuild(data: Any, version: microversion.Version) -> Rebuild:
    """The ``rebuild`` of an action body at ``version``."""
    if not isinstance(data, dict):
        raise Fault(400, "Invalid input for field/attribute rebuild.")
    body = parse(Rebuild, data)
    _in_version(body, version, REBUILD_SINCE, UNTIL)
    return body


def _in_version(
    body: BaseModel, version: microversion.Version, since: dict[str, str], until: dict[str, str]
) -> None:
    """A key given that ``version`` does not have yet (``since``) or no more (``until``) is
    one Nova's schema for it does not know."""
    for field in body.model_fields_set:
        key = type(body).model_fields[field].alias or field
        first, last = since.get(key), until.get(key)
        if (first is not None and not version.at_least(first)) or (
            last is not None and not version.at_most(last)
        ):
            raise Fault(400, f"Additional properties are not allowed ('{key}' was unexpected)")
