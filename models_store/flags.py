"""Command-line flags from pydantic fields: one `--field-name` per field, its description the help,
values validated by the model; errors that name the flag."""
from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Collection, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class KeyValueModel(BaseModel):
    """A config that is also one flag: `name=value,name=value` (any of its fields), as its default
    is shown in --help."""
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        fields: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in data.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name.strip() not in cls.model_fields:
                expected = ",".join(f"{n}=..." for n in cls.model_fields)
                raise ValueError(f"expected {expected} (any of them), got {item!r}")
            fields[name.strip()] = value.strip()
        return fields


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's annotation; None and pydantic do the rest."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if typing.get_origin(annotation) is dict:
        return {"action": "append", "metavar": "KEY=VALUE"}
    if typing.get_origin(annotation) is list:
        return {"type": lambda text: [s.strip() for s in text.split(",") if s.strip()], "metavar": "A,B,..."}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation}
    return {"type": str}  # str, Path, nested models parsed from text by their own validators


def _as_flag(value: Any) -> str:
    """A default as one would type it."""
    if isinstance(value, BaseModel):
        return ",".join(f"{k}={v}" for k, v in value.model_dump().items())
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def key_values(items: Optional[list[str]], flag: str) -> dict[str, str]:
    """Repeated `NAME=VALUE` arguments -> dict, with an error naming the bad one."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def add_model_flags(parser: argparse.ArgumentParser, models: dict[str, type[BaseModel]],
                    exclude: tuple[str, ...] = (), include: Optional[tuple[str, ...]] = None,
                    env_prefix: Optional[str] = None) -> None:
    """One `--field-name` per field of the models ({label: model}; only `include` when given); a
    field several share is one flag, whose help gives each model's default when they differ.
    With `env_prefix`, the help names the environment variable the flag overrides."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    for label, model in models.items():
        for name, f in model.model_fields.items():
            if name not in exclude and (include is None or name in include):
                seen.setdefault(name, []).append((label, f))
    for name, owners in seen.items():
        f = owners[0][1]
        defaults = {label: field.get_default(call_default_factory=True) for label, field in owners}
        shown = {label: _as_flag(d) for label, d in defaults.items()}
        if len(set(map(repr, shown.values()))) == 1:
            default = f"default {next(iter(shown.values()))}"
        else:
            default = "default " + ", ".join(f"{label} {d}" for label, d in shown.items())
        only = "" if len(owners) == len(models) or len(models) == 1 else " [" + ", ".join(label for label, _ in owners) + "]"
        said = [f"env {env_prefix}{name.upper()}"] * bool(env_prefix) + [default] * (default != "default None")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **_flag_type(f.annotation),
                            help=f"{f.description or ''} ({', '.join(said)}){only}".replace(" ()", "").strip())


def model_values(args: argparse.Namespace, model: type[BaseModel], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `model` given on the command line (a dict field from its repeated KEY=VALUE)."""
    out = {}
    for n, f in model.model_fields.items():
        value = getattr(args, n, None)
        if n in exclude or value is None:
            continue
        out[n] = key_values(value, "--" + n.replace("_", "-")) if typing.get_origin(f.annotation) is dict else value
    return out


def describe_flags(error: ValidationError, env_prefix: Optional[str] = None, groups: Collection[str] = ()) -> str:
    """A config built from flags (or `env_prefix` variables) failed: each problem as `--flag: message,
    got VALUE`, on one line. A field of one of `groups` (nested models) is named by its own flag."""
    problems = []
    for e in error.errors():
        loc = e["loc"][1:] if len(e["loc"]) > 1 and e["loc"][0] in groups else e["loc"]
        flag, *inner = loc or ("value",)
        env = f" / {env_prefix}{str(flag).upper()}" if env_prefix else ""
        where = "--" + str(flag).replace("_", "-") + env + "".join(f": {x}" for x in inner)
        got = "" if isinstance(e.get("input"), dict) else f", got {e.get('input')!r}"
        problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(problems)
