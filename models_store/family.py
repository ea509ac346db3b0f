"""The family contract (docs/formats.md, "Family") and its math.

theta(pref)[P] = base[P] + A_P (sum_k pref_k G_P[k]) B_P^T   for every adapted P,
theta(pref)[P] = base[P]                                     otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from pydantic import BaseModel, Field, field_validator

from . import StoreError
from .atomic import atomic_dir
from .checkpoint import StateDict, load_state_dict, save_state_dict, sha256_file
from .preference import Preference, parse_preference
from .preprocess import Preprocess
from .manifest import check_format, read_manifest
from .zoo import Head, TaskInfo

FAMILY_FORMAT = 1
MANIFEST = "manifest.json"
BASE = "base.safetensors"
LOWRANK = "lowrank.safetensors"
HEADS = "heads.safetensors"
FILES = (BASE, LOWRANK, HEADS)


class FamilyManifest(BaseModel):
    format: int = FAMILY_FORMAT
    family_id: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
    created: str
    method: str
    hyperparameters: dict[str, Any] = {}
    architecture: dict[str, Any]
    preprocess: Preprocess
    tasks: list[TaskInfo] = Field(min_length=1)
    rank: int = Field(ge=0)
    targets: list[str]
    files: dict[str, str] = {}
    metrics: dict[str, Any] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        return check_format("family", v, FAMILY_FORMAT)

    @field_validator("targets")
    @classmethod
    def _servable_targets(cls, targets: list[str]) -> list[str]:
        refused = [t for t in targets if parse_target(t) is None]
        if refused:
            raise ValueError(f"cannot adapt {refused[0]!r}: a low-rank family adapts only "
                             f"transformer.resblocks.<i>.{' / '.join(TARGETS.values())}")
        return targets

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


# The parameters a low-rank family may adapt, by short name: the one definition that the trainer
# (which ones it trains), the manifest (which ones a family may name) and the service (which
# ones its forward applies) share, so the trainer cannot publish what the service refuses.
TARGETS = {"in_proj": "attn.in_proj_weight", "out_proj": "attn.out_proj.weight"}
_TARGET = re.compile(r"^transformer\.resblocks\.(\d+)\.(" + "|".join(map(re.escape, TARGETS.values())) + r")$")


def parse_target(name: str) -> Optional[tuple[int, str]]:
    """`transformer.resblocks.3.attn.in_proj_weight` -> (3, "in_proj"); None for any other parameter."""
    m = _TARGET.match(name)
    if m is None:
        return None
    return int(m.group(1)), next(short for short, suffix in TARGETS.items() if suffix == m.group(2))


def target_names(keys: list[str], which: list[str]) -> list[str]:
    """The adapted parameters of a tower with these keys: every block's projections named by `which`."""
    unknown = set(which) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    names = [k for k in keys if (t := parse_target(k)) is not None and t[1] in which]
    if not names:
        raise ValueError(f"no parameter of this tower is a transformer block's {' or '.join(TARGETS[w] for w in which)}")
    return names


def mix(pref: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """M = sum_k pref_k G_k: pref [K] -> [r, r], or [N, K] -> [N, r, r] (one per image)."""
    return torch.einsum("...k,kij->...ij", pref.to(G.dtype), G)


def lowrank_delta(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """A (sum_k pref_k G_k) B^T: the one implementation of the update, for trainer and downloads."""
    return A @ mix(pref, G) @ B.T


@dataclass(frozen=True)
class LowRank:
    """One adapted parameter's factors: A [d_out, r], B [d_in, r], G [K, r, r]."""
    A: torch.Tensor
    B: torch.Tensor
    G: torch.Tensor

    def delta(self, pref: torch.Tensor) -> torch.Tensor:
        return lowrank_delta(self.A, self.B, self.G, pref)


def lowrank_to_state(lowrank: dict[str, LowRank]) -> StateDict:
    out: StateDict = {}
    for name, f in lowrank.items():
        out |= {f"{name}.A": f.A, f"{name}.B": f.B, f"{name}.G": f.G}
    return out


def lowrank_from_state(state: StateDict, targets: list[str]) -> dict[str, LowRank]:
    missing = [f"{t}.{x}" for t in targets for x in "ABG" if f"{t}.{x}" not in state]
    if missing:
        raise StoreError(f"{LOWRANK} lacks tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return {t: LowRank(state[f"{t}.A"], state[f"{t}.B"], state[f"{t}.G"]) for t in targets}


class Family:
    """A verified family, loaded in memory (base, low-rank factors, heads)."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self.manifest: FamilyManifest = read_manifest(self.path / MANIFEST, FamilyManifest)
        if verify:
            self.verify()
        self.base: StateDict = load_state_dict(self.path / BASE)
        self.lowrank = lowrank_from_state(load_state_dict(self.path / LOWRANK), self.manifest.targets)
        heads = load_state_dict(self.path / HEADS)
        self.heads = {t: Head(weight=heads[f"{t}.weight"], bias=heads.get(f"{t}.bias")) for t in self.tasks}
        self._check_shapes()

    @property
    def family_id(self) -> str:
        return self.manifest.family_id

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    def verify(self) -> None:
        """Refuse a family whose files are missing or do not match the manifest's sha256."""
        for name in FILES:
            f = self.path / name
            if not f.is_file():
                raise StoreError(f"family {self.path.name}: missing file {name}")
            expected = self.manifest.files.get(name)
            if expected is None:
                raise StoreError(f"family {self.path.name}: manifest has no sha256 for {name}")
            if sha256_file(f) != expected:
                raise StoreError(f"family {self.path.name}: {name} does not match its sha256 (tampered or corrupt)")

    def _check_shapes(self) -> None:
        k = len(self.tasks)
        for name, f in self.lowrank.items():
            if name not in self.base:
                raise StoreError(f"family {self.family_id}: target {name} is not a base parameter")
            w = self.base[name]
            r = self.manifest.rank
            if f.A.shape != (w.shape[0], r) or f.B.shape != (w.shape[1], r) or f.G.shape != (k, r, r):
                raise StoreError(f"family {self.family_id}: factors of {name} have shapes "
                                 f"{tuple(f.A.shape)}, {tuple(f.B.shape)}, {tuple(f.G.shape)}; "
                                 f"expected ({w.shape[0]}, {r}), ({w.shape[1]}, {r}), ({k}, {r}, {r})")

    def preference(self, text: str | None) -> Preference:
        return parse_preference(text, self.tasks)

    def materialize(self, pref: Preference) -> StateDict:
        """The full tower state dict for one preference (a new tensor only for adapted parameters)."""
        return dict(self.iter_materialized(pref))

    def iter_materialized(self, pref: Preference) -> Iterator[tuple[str, torch.Tensor]]:
        """Lazily, one tensor at a time, so a writer holds at most one extra tensor."""
        p = pref.tensor()
        for name, w in self.base.items():
            f = self.lowrank.get(name)
            yield name, w if f is None else (w.float() + f.delta(p)).to(w.dtype)


def publish_family(store: str | Path, manifest: FamilyManifest, base: StateDict,
                   lowrank: dict[str, LowRank], heads: dict[str, Head]) -> Path:
    """Write a family atomically into STORE/<family_id>; hashes go into the manifest."""
    target = Path(store) / manifest.family_id
    head_state: StateDict = {}
    for t, h in heads.items():
        head_state[f"{t}.weight"] = h.weight
        if h.bias is not None:
            head_state[f"{t}.bias"] = h.bias
    with atomic_dir(target) as tmp:
        save_state_dict(tmp / BASE, base)
        save_state_dict(tmp / LOWRANK, lowrank_to_state(lowrank))
        save_state_dict(tmp / HEADS, head_state)
        manifest = manifest.model_copy(update={"files": {n: sha256_file(tmp / n) for n in FILES}})
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return target


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
