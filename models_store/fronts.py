"""A family's evaluated front, kept beside it in the store (docs/formats.md, "Front"):
STORE/.fronts/<family_id>.json, written by `pmerge front`, read by the service's
GET /families/{id}/front and the page at /ui. It is not one of the family's verified files: a
family stays immutable, and its front can be evaluated again (another split size, more points)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field, ValidationError, field_validator

from . import StoreError
from .atomic import write_text
from .manifest import check_format, describe
from .family import is_family_id
from .preference import PreferenceError, parse_preference

FRONTS = ".fronts"  # STORE/.fronts/<family_id>.json
FRONT_FORMAT = 1
MAX_FRONT_BYTES = 8 << 20  # a front of thousands of points is well under this; more is not a front


class FrontPoint(BaseModel):
    preference: str = Field(description="canonical preference, `digits:0.7,glyphs:0.3,...`")
    accuracy: dict[str, float] = Field(description="per-task accuracy in [0, 1] on `split`")
    on_front: bool = Field(description="not dominated by another point of the same list")


class StoredFront(BaseModel):
    format: int = FRONT_FORMAT
    family_id: str
    tasks: list[str]
    created: str = Field(description="when `pmerge front` evaluated it (ISO 8601, UTC)")
    split: str = Field("test", description="the images it was evaluated on: each task's test split")
    test_limit: Optional[int] = Field(None, description="images per task (None: the whole split)")
    hypervolume: float = Field(description="of the non-dominated accuracies, reference point 0")
    points: list[FrontPoint] = Field(description="the family at each evaluated preference")
    members: Optional[list[FrontPoint]] = Field(None, description="a point-set family's members, each at "
                                                                  "its own preference")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        return check_format("front", v, FRONT_FORMAT)


def front_path(store: str | Path, family_id: str) -> Path:
    if not is_family_id(family_id):
        raise StoreError(f"not a family id: {family_id[:64]!r}")
    return Path(store) / FRONTS / f"{family_id}.json"


def write_front(store: str | Path, front: StoredFront) -> Path:
    """Atomically: a reader (the service) sees the old front or the new one, never half of one."""
    path = front_path(store, front.family_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, front.model_dump_json(indent=2))
    return path


def read_front(store: str | Path, family_id: str) -> Optional[StoredFront]:
    """The family's front, or None when none was evaluated; a bad file is a StoreError naming it."""
    path = front_path(store, family_id)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FRONT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{path} cannot be read: {e.strerror}") from None
    if len(raw) > MAX_FRONT_BYTES:
        raise StoreError(f"{path} is over {MAX_FRONT_BYTES >> 20} MiB: not a front pmerge wrote")
    try:
        front = StoredFront.model_validate_json(raw)
    except ValidationError as e:
        raise StoreError(f"{path} is invalid: {describe(e)}") from None
    if front.family_id != family_id:
        raise StoreError(f"{path} is the front of {front.family_id!r}, not of {family_id!r}")
    for where, points in (("points", front.points), ("members", front.members or [])):
        for i, point in enumerate(points):
            try:
                parse_preference(point.preference, front.tasks)
            except PreferenceError as e:
                raise StoreError(f"{path} is invalid: {where}[{i}]: {e}") from None
            unknown = sorted(set(point.accuracy) - set(front.tasks))
            if unknown:
                raise StoreError(f"{path} is invalid: {where}[{i}]: accuracy of {unknown[0]!r}, not a task of the front")
    return front
