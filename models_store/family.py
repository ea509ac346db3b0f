"""The family contract (docs/formats.md, "Family"): the manifest (format 2, kinds; format 1 read as
kind `lowrank`), loading and verification, publication. The math of each kind is in kinds/."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from . import StoreError
from .atomic import atomic_dir
from .checkpoint import StateDict, load_state_dict, payload_bytes, save_state_dict, sha256_file
from .preference import Preference, parse_preference
from .preprocess import Preprocess
from .kinds import FORMAT_1_KIND, KINDS, MATERIALIZATION, get_kind
from .manifest import check_format, describe, parse_manifest
from .zoo import Head, TaskInfo

if TYPE_CHECKING:
    import torch

FAMILY_FORMAT = 2
MANIFEST = "manifest.json"
HEADS = "heads.safetensors"
# A family id is a directory name of the store and a path segment of the API: never a path, never
# longer than a file name may be. The one definition, for manifests, stores and routes.
FAMILY_ID_MAX = 128
SERVED_TOWERS = 3  # by default, a family keeps on the device at most this many of its towers (serving dtype),
# what it holds resident and its cache together; its cache has room for one tower at least
_FAMILY_ID = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.+-]{{0,{FAMILY_ID_MAX - 1}}}")


def is_family_id(text: str) -> bool:
    """Whether `text` is a valid family id (the whole text: a trailing newline is not)."""
    return isinstance(text, str) and _FAMILY_ID.fullmatch(text) is not None


def shown_id(text: str) -> str:
    """An id as an error message shows it: repr'd, and cut when too long to be one."""
    return repr(text) if len(text) <= FAMILY_ID_MAX else repr(text[:48]) + f"... ({len(text)} characters)"


class FamilyManifest(BaseModel):
    format: int = FAMILY_FORMAT
    family_id: str
    created: str
    method: str
    hyperparameters: dict[str, Any] = {}
    zoo: Optional[str] = Field(None, description="the zoo the family was trained from (its path there)")
    architecture: dict[str, Any]
    preprocess: Preprocess
    tasks: list[TaskInfo] = Field(min_length=1)
    kind: str = FORMAT_1_KIND
    kind_params: dict[str, Any] = {}
    files: dict[str, str] = {}
    metrics: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_search(cls, data: Any) -> Any:
        # a MAP family published before this version held its search box at the top (`search`); it is
        # the learner's, so it is read into its metrics (`search_box`), where such families hold it now
        if isinstance(data, dict) and isinstance(data.get("search"), dict):
            data = dict(data)
            data["metrics"] = {**(data.get("metrics") or {}), "search_box": data.pop("search")}
        return data

    @model_validator(mode="before")
    @classmethod
    def _read_format_1(cls, data: Any) -> Any:
        # format 1 was the low-rank kind with rank and targets at the top, the zoo in hyperparameters
        if isinstance(data, dict) and data.get("format") == 1:
            data = dict(data)
            data["kind"] = FORMAT_1_KIND
            data["kind_params"] = {k: data.pop(k) for k in ("rank", "targets") if k in data}
            data.setdefault("zoo", (data.get("hyperparameters") or {}).get("zoo"))
        return data

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        return check_format("family", v, FAMILY_FORMAT, older=(1,))

    @field_validator("family_id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not is_family_id(v):
            raise ValueError(f"{shown_id(v)} is not a family id (1 to {FAMILY_ID_MAX} letters, digits, _ . + -, "
                             f"not starting with . + -)")
        return v

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown family kind {v!r} (this pmerge knows {', '.join(KINDS)})")
        return v

    @property
    def materialization(self) -> str:
        """What makes this family's towers: its kind and the version of that kind's materialisation
        (a download made by another version is another file)."""
        return f"{self.kind}/{MATERIALIZATION[self.kind]}"

    @cached_property
    def params(self) -> BaseModel:
        """kind_params, validated by the kind's own model, once. Not at parse time: that would import
        every kind's code (torch) for commands that only list manifests."""
        return get_kind(self.kind).Params.model_validate(self.kind_params)

    def check_params(self, where: Path | str) -> BaseModel:
        """`params`, or a StoreError that names `where` and what is wrong with kind_params."""
        try:
            return self.params
        except ValidationError as e:
            raise StoreError(f"{where} is invalid: kind_params: {describe(e)}") from None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def read_family_manifest(path: Path) -> tuple[FamilyManifest, str]:
    """The manifest of the family directory `path` and the sha256 of its bytes; refused when the id
    it claims is not the directory's name (a copy under another name would pose as that family)."""
    file = path / MANIFEST
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"missing manifest: {file}") from None
    except OSError as e:
        raise StoreError(f"{file} cannot be read: {e.strerror or e}") from None
    manifest = parse_manifest(raw, file, FamilyManifest)
    if manifest.family_id != path.name:
        raise StoreError(f"{file} claims family id {shown_id(manifest.family_id)}, but its directory is "
                         f"{shown_id(path.name)}: a family's id is its directory's name")
    return manifest, hashlib.sha256(raw).hexdigest()


class FileCost(BaseModel):
    """What one file of a family costs: its bytes on disk, on the device and in host memory while it is served."""
    name: str
    disk_bytes: int
    resident_bytes: int = Field(description="kept on the device while served, in the serving dtype, beside the "
                                            "device cache (PMERGE_DEVICE_CACHE_BYTES) of materialised variants")
    host_bytes: int = Field(0, description="kept in host memory while served on an accelerator, copied to the device "
                                           "a piece at a time when a batch needs it (on a CPU, host and device are "
                                           "one memory: count both)")


class Family:
    """A verified family, loaded in memory: its manifest, heads and its kind's tensors (`body`).

    `digest` is the sha256 of the manifest's bytes: with the files verified against the hashes it
    lists, it names exactly what was loaded (the download cache keys its files by it)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self._costs: dict[Any, list[FileCost]] = {}  # Family.costs, by serving dtype
        self.manifest, self.digest = read_family_manifest(self.path)
        self.manifest.check_params(self.path / MANIFEST)
        self.kind = get_kind(self.manifest.kind)
        if verify:
            self.verify()
        m = self.manifest
        self.body = self.kind.load(self.path, m.params, m.task_names, m.architecture, m.family_id)
        heads = load_state_dict(self.path / HEADS)
        self.heads = {t: Head(weight=heads[f"{t}.weight"], bias=heads.get(f"{t}.bias")) for t in self.tasks}

    @property
    def family_id(self) -> str:
        return self.manifest.family_id

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.kind.files, HEADS)

    def verify(self) -> None:
        """Refuse a family whose files are missing or do not match the manifest's sha256."""
        for name in self.files:
            f = self.path / name
            if not f.is_file():
                raise StoreError(f"family {self.path.name}: missing file {name}")
            expected = self.manifest.files.get(name)
            if expected is None:
                raise StoreError(f"family {self.path.name}: manifest has no sha256 for {name}")
            if sha256_file(f) != expected:
                raise StoreError(f"family {self.path.name}: {name} does not match its sha256 (tampered or corrupt)")

    def preference(self, text: str | None) -> Preference:
        return parse_preference(text, self.tasks)

    def costs(self, dtype: "torch.dtype") -> list[FileCost]:
        """Each file's bytes on disk and resident on the device when served in `dtype` (the heads as
        stored; the manifest, read once, none)."""
        known = self._costs.get(dtype)  # read once per dtype: the verified files do not change
        if known is not None:
            return known
        stored = {name: payload_bytes(self.path / name) for name in self.files}
        resident = self.body.resident_bytes(dtype, stored) | {HEADS: stored[HEADS], MANIFEST: 0}
        host = self.body.host_bytes(stored)
        costs = self._costs[dtype] = [FileCost(name=n, disk_bytes=(self.path / n).stat().st_size,
                                               resident_bytes=resident[n], host_bytes=host.get(n, 0))
                                      for n in (MANIFEST, *self.files)]
        return costs

    def device_cache_bytes(self, dtype: "torch.dtype", configured: Optional[int] = None) -> int:
        """The bound of the servable's device cache: `configured`, else what SERVED_TOWERS of its
        towers leave beside its resident bytes, one tower at least."""
        if configured is not None:
            return configured
        tower, resident = self.tower_bytes(dtype), sum(c.resident_bytes for c in self.costs(dtype))
        return max(tower, SERVED_TOWERS * tower - resident)

    def tower_specs(self) -> list[tuple[str, "torch.dtype", tuple[int, ...]]]:
        """(name, dtype, shape) of every tensor of theta(pref), the same for every preference."""
        return self.body.tower_specs()

    def tower_bytes(self, dtype: "Optional[torch.dtype]" = None) -> int:
        """Bytes of one materialised tower, its floating-point tensors in `dtype` (default: as stored)."""
        import torch
        total = 0
        for _, stored, shape in self.tower_specs():
            kind = dtype if dtype is not None and stored.is_floating_point else stored
            total += torch.Size(shape).numel() * torch.empty((), dtype=kind).element_size()
        return total

    def resolve(self, preferences: Any) -> list[Any]:
        """The variant serving each preference row [N, K] (kinds/base.py, KindFormat.resolve)."""
        return self.body.resolve(preferences)

    def variant(self, pref: Preference) -> Any:
        return self.body.resolve([pref.weights])[0]

    def materialize(self, pref: Preference) -> StateDict:
        """The full tower state dict for one preference (on the CPU)."""
        return dict(self.iter_materialized(pref))

    def iter_materialized(self, pref: Preference, device: "torch.device | str" = "cpu"
                          ) -> Iterator[tuple[str, "torch.Tensor"]]:
        """The tower of the variant serving `pref`, lazily, one tensor at a time, computed on `device`, so
        a writer holds at most one extra tensor."""
        import torch
        return self.body.materialize(self.variant(pref), torch.device(device))

    def servable(self, device: "torch.device", dtype: "torch.dtype", cache_bytes: Optional[int] = None,
                 graphs: bool = False):
        """The kind's model (kinds/base.py, Servable) on `device`, keeping at most `cache_bytes` of
        materialised objects there (variants' towers, feature-map maps; default: device_cache_bytes);
        with `graphs`, its forwards replay CUDA graphs (CUDA only). It serves variants: `resolve`
        makes them."""
        return self.body.servable(self.heads, device, dtype, self.device_cache_bytes(dtype, cache_bytes), graphs)


def publish_family(store: str | Path, manifest: FamilyManifest, files: dict[str, StateDict],
                   heads: dict[str, Head]) -> Path:
    """Write a family atomically into STORE/<family_id>: its kind's `files` (name -> tensors), the
    heads, and the manifest with every file's sha256."""
    target = Path(store) / manifest.family_id
    manifest.check_params(f"family {manifest.family_id}'s manifest")
    head_state: StateDict = {}
    for t, h in heads.items():
        head_state[f"{t}.weight"] = h.weight
        if h.bias is not None:
            head_state[f"{t}.bias"] = h.bias
    with atomic_dir(target) as tmp:
        for name, state in (files | {HEADS: head_state}).items():
            save_state_dict(tmp / name, state)
        manifest = manifest.model_copy(update={"files": {n: sha256_file(tmp / n) for n in (*files, HEADS)}})
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return target


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
