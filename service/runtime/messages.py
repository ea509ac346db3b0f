"""The messages between a front-end process and the engine process of `pmerge serve` (service/runtime/ipc.py
carries them as a JSON header and an optional payload): one class per request and per answer, and
the operation each request names. Both ends build and read these classes, never bare dicts, so a
field renamed on one side fails in mypy and the tests rather than in a request.

    Hold(family)                        -> HoldReply(manifest, digest, device_jpeg, files, cache_bytes)
    Classify(family, digest, arena,
             images, prefs, background)  -> ClassifyReply(tasks, sizes) + logits [N, sum of classes] float32
    Checkpoint(family, digest, pref,     -> CheckpointReply(etag, variant, not_modified | size, filename,
               if_none_match)               built, path | stream), then, when streamed, payload-carrying
                                            chunks and an end
    Families()                           -> FamiliesReply(families)
    Readiness()                          -> ReadinessReply(ready, family_id, detail)

A refusal (any request) is ipc.refusal's header, raised again in the front end as the service error.
Plain Python: a front end imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Optional, TypedDict, TypeVar, Union


class Op(str, Enum):
    HOLD = "hold"
    CLASSIFY = "classify"
    CHECKPOINT = "checkpoint"
    FAMILIES = "families"
    READINESS = "readiness"


class ImagePlace(TypedDict, total=False):
    """Where a decoded image lies in a front's shared-memory arena."""
    kind: str  # "pixels" (uint8 [C, S, S]) or "jpeg" (the file, decoded on the engine's device)
    at: int
    n: int
    name: str
    shape: list[int]  # pixels only


W = TypeVar("W", bound="Wire")


@dataclass(frozen=True)
class Wire:
    """A message: its fields are its JSON header's keys."""

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_wire(cls: type[W], header: dict[str, Any]) -> W:
        return cls(**{f.name: header[f.name] for f in fields(cls) if f.name in header})


@dataclass(frozen=True)
class Request(Wire):
    op: ClassVar[Op]

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op.value, **super().to_wire()}


@dataclass(frozen=True)
class Reply(Wire):
    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, **super().to_wire()}


@dataclass(frozen=True)
class Hold(Request):
    op: ClassVar[Op] = Op.HOLD
    family: Optional[str] = None  # None: the default family


@dataclass(frozen=True)
class HoldReply(Reply):
    manifest: dict[str, Any]
    digest: str
    device_jpeg: bool
    files: list[dict[str, Any]]  # FileCost, as JSON
    cache_bytes: int


@dataclass(frozen=True)
class Classify(Request):
    op: ClassVar[Op] = Op.CLASSIFY
    family: str
    digest: str
    arena: str
    images: list[ImagePlace]
    prefs: list[list[float]] | list[float]  # [N, K], or one [K] for every image
    background: bool = False  # POST /select's work: served where the foreground leaves room


@dataclass(frozen=True)
class ClassifyReply(Reply):
    tasks: list[str]
    sizes: list[int]  # classes per task: the payload's columns, in `tasks` order


@dataclass(frozen=True)
class Checkpoint(Request):
    op: ClassVar[Op] = Op.CHECKPOINT
    family: str
    digest: str
    pref: str  # canonical
    if_none_match: Optional[str] = None  # the client's header: the engine resolves the variant, whose ETag it is


@dataclass(frozen=True)
class CheckpointReply(Reply):
    etag: str
    variant: str  # the key of the variant serving the preference
    not_modified: bool = False  # the client holds it: nothing more follows
    size: int = 0
    filename: str = ""
    built: bool = False
    path: Optional[str] = None  # the cached file, which the front end opens and sends
    stream: bool = False  # else: the file is made as it is sent, in chunks on this connection


@dataclass(frozen=True)
class Chunk(Reply):
    """One piece of a streamed checkpoint (the payload), or its end."""
    end: bool = False


@dataclass(frozen=True)
class Families(Request):
    op: ClassVar[Op] = Op.FAMILIES


@dataclass(frozen=True)
class FamiliesReply(Reply):
    families: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Readiness(Request):
    op: ClassVar[Op] = Op.READINESS


@dataclass(frozen=True)
class ReadinessReply(Reply):
    ready: bool
    family_id: Optional[str] = None
    detail: Optional[str] = None


AnyRequest = Union[Hold, Classify, Checkpoint, Families, Readiness]
REQUESTS: dict[Op, type[Request]] = {cls.op: cls for cls in (Hold, Classify, Checkpoint, Families, Readiness)}


class BadMessage(ValueError):
    """A header that is no request of this protocol."""


def request_from_wire(header: dict[str, Any]) -> Request:
    try:
        op = Op(header.get("op"))
    except ValueError:
        raise BadMessage(f"unknown operation {header.get('op')!r}") from None
    try:
        return REQUESTS[op].from_wire(header)
    except TypeError as e:  # a field missing
        raise BadMessage(f"{op.value}: {e}") from None
