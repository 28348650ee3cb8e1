"""Settings declared once: a frozen dataclass whose fields carry their help text; the
command-line flags, their ``KUBENOVA_*`` environment defaults and ``--help`` are generated from
it, and :func:`to_args` turns a settings object back into flags (how the test bed starts the
programs with exactly the settings it means).

    @dataclasses.dataclass(frozen=True)
    class Settings:
        workers: int = option(4, "Servers reconciled in parallel.")

    cfg = config.parse(Settings, argv, prog="kubenova-agent")   # --workers, $KUBENOVA_WORKERS
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

S = TypeVar("S")
ENV_PREFIX = "KUBENOVA_"


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    env: str | None = None,
) -> Any:
    """A settings field: its default, its help text, and optionally the allowed values and an
    environment variable other than ``KUBENOVA_<FIELD>`` (``KUBECONFIG``, say)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "env": env}
    if callable(default) and not isinstance(default, (str, int, float, bool)):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(field: dataclasses.Field[Any]) -> str:
    return "--" + field.name.replace("_", "-")


def env_name(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("env") or ENV_PREFIX + field.name.upper())


def _base_type(hint: Any) -> type:
    """``int`` for ``int``, ``str`` for ``str | None``; bool, int, float or str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    if hint in (bool, int, float, str):
        return typing.cast(type, hint)
    raise TypeError(f"settings fields are bool, int, float or str (optional): {hint!r}")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of settings class ``cls``: one flag per field, each defaulting to
    its environment variable, else to the field's default."""
    hints = typing.get_type_hints(cls)
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind = _base_type(hints[field.name])
        convert = _parse_bool if kind is bool else kind
        raw_env = os.environ.get(env_name(field))
        default = convert(raw_env) if raw_env is not None else _default(field)
        kwargs: dict[str, Any] = {
            "default": default,
            "help": f"{field.metadata.get('help', '')} [${env_name(field)}]",
            "dest": field.name,
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = convert
            kwargs["metavar"] = field.name.upper()
        if field.metadata.get("choices"):
            kwargs["choices"] = list(field.metadata["choices"])
        p.add_argument(flag(field), **kwargs)
    return p


def parse(cls: type[S], argv: Sequence[str] | None, prog: str, description: str) -> S:
    """Settings of class ``cls`` from flags, environment and defaults (in that order)."""
    args = parser(cls, prog, description).parse_args(argv)
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})  # type: ignore[arg-type]


def to_args(settings: Any) -> list[str]:
    """The flags that give a program exactly ``settings`` (every field that is set, whatever
    its environment says), for starting it from a test bed or a manifest."""
    out: list[str] = []
    for field in dataclasses.fields(settings):
        if not field.init:
            continue
        value = getattr(settings, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag(field) if value else "--no-" + flag(field)[2:])
        else:
            out += [flag(field), str(value)]
    return out
