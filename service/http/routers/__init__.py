"""The routes, one module per resource; each family resource is served twice, for the default family
and under /families/{family_id}/ (`Naming`)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from service.errors import ErrorBody

# FastAPI's own types for a route's tags and documented responses (its parameters are invariant lists and dicts)
Tags = list[str | Enum]
Responses = dict[int | str, dict[str, Any]]

ERRORS: Responses = {s: {"model": ErrorBody} for s in (400, 401, 413, 415, 422, 503)}


@dataclass(frozen=True)
class Naming:
    """How a route names its family: the dependency that holds it, the path prefix, the OpenAPI id prefix."""
    family: Callable  # a dependency yielding a FamilyView
    prefix: str = ""
    operation_prefix: str = ""

    def op(self, name: str) -> str:
        return f"{self.operation_prefix}{name}"  # OpenAPI ids are unique per route
