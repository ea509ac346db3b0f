"""Kind `feature-map` (ReACT): a base tower plus, per task t, a correction W_t of its output
features and that task's calibration matrix C_t. For a preference p the correction is

    W_p = (sum_t p_t W_t C_t) (sum_t p_t C_t)^-1        (d x d)

applied to the tower's projected features before they are normalised: f_p = W_p f, with
f = pool(x) @ proj. At a one-hot preference W_p = W_t.

Files: `base.safetensors` (the base merged tower) and `maps.safetensors`: "W" [K, d, d] and
"C" [K, d, d], float32. kind_params: `dim` (d, the features' size).

A variant is the canonical weights of a preference. Serving is per image and exact in one forward pass: the base tower's features of every image go
through its own preference's W_p (each new preference solved on its own, in float64, so a map
never depends on its batch; the maps kept in the kinds' one bounded cache). A download folds W_p into the output projection, proj_p = proj W_p^T (f_p = x proj_p), so
the checkpoint is a plain open_clip tower that loads with strict=True.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from pydantic import BaseModel, Field

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..tower import check_tower_state, load_tower
from ..zoo import Head
from .base import DeviceCache, KindFormat, Servable, Variant, cast_bytes

NAME = "feature-map"
BASE = "base.safetensors"
MAPS = "maps.safetensors"
FILES = (BASE, MAPS)
PROJ = "proj"


class FeatureMapParams(BaseModel):
    dim: int = Field(ge=1, description="d: the size of the tower's output features")


def map_factors(W: torch.Tensor, C: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """WC = W_t C_t and C [K, d, d], float64 on `device`: what preference_maps takes."""
    C = C.to(device, torch.float64)
    return W.to(device, torch.float64) @ C, C


def preference_maps(WC: torch.Tensor, C: torch.Tensor, prefs: Sequence[Sequence[float]]) -> torch.Tensor:
    """W_p = (sum_t p_t W_t C_t)(sum_t p_t C_t)^-1 for each preference (host weights: a variant's
    canonical ones), from map_factors -> [M, d, d] float32. Each map is solved on its own in float64: the
    systems are ill-conditioned (a calibration's C_t has the rank of its images, plus a small ridge),
    so a map solved in float32, or in one batched call with other preferences, would depend on the
    preferences it came with; this way it is a function of its preference alone."""
    maps = []
    for row in prefs:
        p = torch.tensor(row, dtype=torch.float64, device=WC.device)
        numerator = torch.einsum("k,kil->il", p, WC)
        denominator = torch.einsum("k,kij->ij", p, C)
        maps.append(torch.linalg.solve(denominator, numerator, left=False))  # numerator @ denominator^-1
    return torch.stack(maps).float()


def preference_map(W: torch.Tensor, C: torch.Tensor, pref: Sequence[float], device: torch.device) -> torch.Tensor:
    """W_p for one preference (host weights) -> [d, d] float32 on `device`."""
    return preference_maps(*map_factors(W, C, device), [pref])[0]


def folded(tensors: Iterator[tuple[str, torch.Tensor]], W: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """A tower's tensors with the map W [d, d] folded into proj: x (proj W^T) = W f, so the tower that
    a download writes is a plain open_clip tower."""
    for name, w in tensors:
        yield name, (w.float() @ W.T).to(w.dtype) if name == PROJ else w


def family_files(base: StateDict, W: torch.Tensor, C: torch.Tensor) -> dict[str, StateDict]:
    return {BASE: base, MAPS: {"W": W.float().contiguous(), "C": C.float().contiguous()}}


@dataclass(frozen=True)
class MapPlan:
    """A batch's distinct variants (M) and which one each image has (N indices), host values."""
    distinct: list[Variant]
    inverse: list[int]

    @classmethod
    def of(cls, variants: Sequence[Variant]) -> "MapPlan":
        index: dict[Variant, int] = {}
        inverse = [index.setdefault(v, len(index)) for v in variants]
        return cls(list(index), inverse)


class FeatureMapServable(Servable):
    """The base tower once for the whole batch, then each image's preference map on its features.
    Maps of a batch's new preferences are solved one by one; they stay in the kinds' one cache."""

    def __init__(self, tower: torch.nn.Module, W: torch.Tensor, C: torch.Tensor, heads: dict[str, Head],
                 device: torch.device, dtype: torch.dtype, cache_bytes: int, graphs: bool = False):
        super().__init__(heads, device, dtype, graphs)
        self.tower = tower.to(device=self.device, dtype=dtype).eval()
        self.WC, self.C = map_factors(W, C, self.device)
        self.cache: DeviceCache[Any] = DeviceCache(cache_bytes)  # the maps (and an anchored family's towers)

    @property
    def solved(self) -> int:
        """Maps solved so far, a cache miss each (tests, benchmarks)."""
        return self.cache.misses

    def plan(self, variants: Sequence[Variant]) -> MapPlan:
        return MapPlan.of(variants)

    def tower_features(self, images: torch.Tensor, plan: MapPlan) -> torch.Tensor:
        """The towers' output features [N, d], float32: here the base tower's, once for the batch."""
        return self.run("base", self.tower, images).float()

    def solve(self, keys: list[Variant]) -> torch.Tensor:
        """The maps [M, d, d] of these distinct variants (here: weights), each solved on its own."""
        return preference_maps(self.WC, self.C, keys)

    def features(self, images: torch.Tensor, plan: MapPlan) -> torch.Tensor:
        features = self.tower_features(images, plan)
        keys = plan.distinct
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            solved = self.solve([keys[i] for i in missing])
            d = solved.shape[-1]
            self.cache.room(len(missing) * d * d * 4, keep=frozenset(keys))  # a batch keeps its own maps
            for i, m in zip(missing, solved):
                self.cache.put(keys[i], m, d * d * 4)
        maps = torch.stack([self.cache[key] for key in keys])  # [M, d, d]
        if len(keys) == 1:
            return features @ maps[0].T
        per_image = maps[torch.tensor(plan.inverse, device=self.device)]  # [N, d, d]
        return torch.bmm(per_image, features.unsqueeze(2)).squeeze(2)


def read_base(path: Path, architecture: dict, family_id: str) -> StateDict:
    base = load_state_dict(path / BASE)
    check_tower_state(base, architecture, f"family {family_id}: {BASE}")
    return base


def read_maps(path: Path, family_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """W and C from the family's MAPS file, which must hold exactly those."""
    maps = load_state_dict(path / MAPS)
    if set(maps) != {"W", "C"}:
        raise StoreError(f"family {family_id}: {MAPS} must hold exactly W and C, has {sorted(maps)}")
    return maps["W"], maps["C"]


class FeatureMapFamily(KindFormat):
    name = NAME
    files: tuple[str, ...] = FILES
    Params: type[FeatureMapParams] = FeatureMapParams

    def __init__(self, base: StateDict, W: torch.Tensor, C: torch.Tensor, params: FeatureMapParams, tasks: int,
                 architecture: dict, family_id: str):
        proj = base.get(PROJ)
        if proj is None or proj.ndim != 2:
            raise StoreError(f"family {family_id}: a feature-map family needs the tower's output projection "
                             f"`{PROJ}` to fold its maps into")
        d = params.dim
        if proj.shape[1] != d or W.shape != (tasks, d, d) or C.shape != (tasks, d, d):
            raise StoreError(f"family {family_id}: maps W {tuple(W.shape)} and C {tuple(C.shape)} and proj "
                             f"{tuple(proj.shape)} do not fit {tasks} tasks of dim {d}")
        self.base, self.W, self.C, self.architecture = base, W.float(), C.float(), architecture

    @classmethod
    def load(cls, path: Path, params: FeatureMapParams, tasks: list[str], architecture: dict,
             family_id: str) -> "FeatureMapFamily":
        W, C = read_maps(path, family_id)
        return cls(read_base(path, architecture, family_id), W, C, params, len(tasks), architecture, family_id)

    def tower_specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.base.items()]

    def materialize(self, variant: Variant, device: torch.device = torch.device("cpu")
                    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The base tower with W_p folded into proj (the variant: the weights); the map is solved on
        `device` with the first tensor."""
        W = preference_map(self.W, self.C, variant, device)
        yield from folded(((name, w.to(device)) for name, w in self.base.items()), W)

    def resident_bytes(self, dtype: torch.dtype, stored: dict[str, int]) -> dict[str, int]:
        # the tower in the serving dtype; W C and C in float64, for the solves
        return {BASE: cast_bytes(self.base, dtype), MAPS: 2 * self.W.numel() * 8}

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> FeatureMapServable:
        return FeatureMapServable(load_tower(self.architecture, self.base), self.W, self.C, heads, device, dtype,
                                  cache_bytes, graphs)
