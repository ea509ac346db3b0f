"""Manifests (zoo.json, a family's manifest.json): reading them, and the format check they share.

A reader refuses a format it does not know by name, and turns every way a manifest can be bad
(missing, unreadable, not JSON, invalid) into a StoreError that names the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from . import StoreError

M = TypeVar("M", bound=BaseModel)


def check_format(kind: str, version: int, known: int, older: tuple[int, ...] = ()) -> int:
    """A pydantic validator's body: `version` must be one this pmerge reads (`known`, or an older
    one that it still reads)."""
    if version != known and version not in older:
        readable = ", ".join(map(str, (*older, known)))
        raise ValueError(f"unknown {kind} format {version} (this pmerge reads format {readable})")
    return version


def read_manifest(path: Path, model: type[M]) -> M:
    if not path.is_file():
        raise StoreError(f"missing manifest: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StoreError(f"{path} cannot be read: {e}") from e
    return parse_manifest(raw, path, model)


def parse_manifest(raw: bytes, path: Path, model: type[M]) -> M:
    """The bytes of the manifest file `path`, validated by `model`; every way it can be bad is a
    StoreError that names the file."""
    try:
        return model.model_validate(json.loads(raw.decode()))
    except UnicodeDecodeError as e:
        raise StoreError(f"{path} cannot be read: {e}") from e
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is not valid JSON: {e}") from e
    except ValidationError as e:
        raise StoreError(f"{path} is invalid: {describe(e)}") from e


def describe(error: ValidationError) -> str:
    """A ValidationError on one line, each problem as `field: message`, without pydantic's boilerplate.
    An unknown format comes first: with it, the other problems are expected."""
    problems = [(".".join(map(str, e["loc"])) or "value", e["msg"].removeprefix("Value error, "))
                for e in error.errors()]
    problems.sort(key=lambda p: p[0] != "format")
    return "; ".join(f"{where}: {msg}" for where, msg in problems)
