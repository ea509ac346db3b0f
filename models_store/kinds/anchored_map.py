"""Kind `anchored-map` (ReACT anchored at the fine-tuned towers): a feature-map family
(kinds/feature_map.py) whose tower moves towards fine-tuned tower k where the preference puts
more than `anchor` (q >= 0.5) on task k:

    k = argmax_t p_t,   a(p) = max(0, (p_k - q) / (1 - q)), rounded to ANCHOR_DECIMALS
    tower(p) = base + a (theta_k - base)          f_p = ((1 - a) W_p + a I) f

so for p_k <= q it is the feature-map family (ReACT), and at the vertex of k it is fine-tuned tower
k itself; in between, both the weights and the map move along a straight line. Files: those of
feature-map and `towards.safetensors`, each task's target delta_k[P] = theta_k[P] - base[P] for
every float P of the base, "<task>/<P>", dense (`towards_bits` 32, the default of a family that does
not say) or quantised to 2, 4 or 8 bits (models_store/task_tensors.py says how). At 4 bits the K
targets cost K x 4.25 / 32 towers instead of K, and each is decoded on the device, one elementwise
pass per tensor, when a batch needs its tower.

kind_params: `dim`, `anchor` and `towards_bits`.

A variant is (canonical weights, anchor). Serving: the base tower once for the images whose preferences need no anchoring, one anchored
tower per distinct (k, a) for the others (materialised on the device), then each image's map;
towers and maps share one DeviceCache, so the family keeps at most its bound, whichever it holds,
towers out first. On an accelerator the targets stay in host memory and a tower's build copies
task k's piece of each tensor: the device holds the base, the maps and the cache, whatever K.
A download is tower(p) with its map folded into proj, as feature-map's: a plain open_clip tower.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from pydantic import Field

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..task_tensors import DENSE, Bits, TaskTensors
from ..zoo import Head
from .base import TowerCache, Variant, Weights, groups
from .feature_map import (BASE, MAPS, FeatureMapFamily, FeatureMapParams, FeatureMapServable, MapPlan, folded,
                          preference_map, read_base, read_maps)

NAME = "anchored-map"
TOWARDS = "towards.safetensors"
FILES = (BASE, MAPS, TOWARDS)
ANCHOR_DECIMALS = 3
TOWER = "tower"  # the first element of a tower's key in the cache (a map's key is its preference)

Anchor = Optional[tuple[int, float]]  # (task index k, a > 0), or None: the base tower
AnchoredVariant = tuple[Weights, Anchor]


class AnchoredMapParams(FeatureMapParams):
    anchor: float = Field(ge=0.5, lt=1.0, description="q: above this weight on one task, the tower moves towards "
                                                      "that task's fine-tuned tower")
    towards_bits: Bits = Field(DENSE, description="bits per parameter of each task's target "
                                                                  "delta_k: 32 dense, else quantised group-wise")


def anchor_of(weights: Weights, q: float) -> Anchor:
    """(k, a) of canonical weights, or None where no weight exceeds q."""
    k = max(range(len(weights)), key=weights.__getitem__)
    a = round(max(0.0, (weights[k] - q) / (1.0 - q)), ANCHOR_DECIMALS)
    return None if a == 0.0 else (k, a)


def family_files(base: StateDict, W: torch.Tensor, C: torch.Tensor, towards: StateDict) -> dict[str, StateDict]:
    """The files of a family; `towards` holds every task's `stored_tensors` (prefix "")."""
    return {BASE: base, MAPS: {"W": W.float().contiguous(), "C": C.float().contiguous()}, TOWARDS: towards}


@dataclass(frozen=True)
class AnchoredPlan(MapPlan):
    """MapPlan, plus the batch's rows per tower (an anchor, or None: the base tower)."""
    towers: list[tuple[Anchor, list[int]]]


class AnchoredMapServable(FeatureMapServable):
    def __init__(self, family: "AnchoredMapFamily", heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False):
        from ..tower import load_tower
        super().__init__(load_tower(family.architecture, family.base), family.W, family.C, heads, device, dtype,
                         cache_bytes, graphs)
        # the base's tensors are the served tower's own (serving dtype, on the device): no second copy
        self.family: AnchoredMapFamily = family.moved(base=self.tower.state_dict(),
                                                      towards=family.towards.held_for(self.device))
        # one cache for the maps (keyed by variant) and the towers (keyed by TOWER, k, a): the
        # family keeps at most cache_bytes on the device, whichever it holds
        self.towers = TowerCache(family.architecture, family.tower_specs(), self.device, dtype, self.cache, self.graphed)

    @property
    def materialized(self) -> int:
        return self.towers.built

    @property
    def solved(self) -> int:
        return self.cache.misses - self.towers.built

    def plan(self, variants: Sequence[Variant]) -> AnchoredPlan:
        plan = MapPlan.of(variants)
        towers = [(anchor, rows) for anchor, rows in groups([v[1] for v in variants])]
        return AnchoredPlan(plan.distinct, plan.inverse, towers)

    def anchored_tower(self, anchor: tuple[int, float]) -> torch.nn.Module:
        family = self.family
        return self.towers.get((TOWER, *anchor), lambda: ((name, anchored_tensor(name, w, family.towards, anchor))
                                                          for name, w in family.base.items()))

    def tower_features(self, images: torch.Tensor, plan: MapPlan) -> torch.Tensor:
        if not isinstance(plan, AnchoredPlan):
            raise TypeError(f"an anchored-map batch needs its AnchoredPlan, got {type(plan).__name__}")
        if all(anchor is None for anchor, _ in plan.towers):  # no image anchored: the base tower alone
            return super().tower_features(images, plan)
        features: Optional[torch.Tensor] = None
        for anchor, rows in plan.towers:
            index = torch.tensor(rows, device=self.device)
            if anchor is None:
                out = self.run("base", self.tower, images[index])
            else:
                tower = self.anchored_tower(anchor)
                out = self.run(tower.graph_key, tower, images[index])
            if features is None:
                features = torch.empty(len(images), out.shape[1], device=self.device)
            features[index] = out.float()
        if features is None:
            raise ValueError("a batch of no image")
        return features

    def solve(self, keys: list[Variant]) -> torch.Tensor:
        maps = super().solve([weights for weights, _ in keys])
        a = [0.0 if anchor is None else anchor[1] for _, anchor in keys]
        return towards_identity(maps, torch.tensor(a, device=self.device))


def towards_identity(maps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(1 - a) W_p + a I for maps [..., d, d] and a [...] (0: the map itself, 1: the identity)."""
    eye = torch.eye(maps.shape[-1], device=maps.device)
    return (1 - a)[..., None, None] * maps + a[..., None, None] * eye


def anchored_tensor(name: str, w: torch.Tensor, towards: TaskTensors, anchor: Anchor) -> torch.Tensor:
    """base[name] + a (theta_k - base)[name], in float32 then the base's dtype; the base's without an anchor."""
    if anchor is None or name not in towards:
        return w
    k, a = anchor
    return (w.float() + a * towards.one(name, k, w.device)).to(w.dtype)


class AnchoredMapFamily(FeatureMapFamily):
    name = NAME
    files = FILES
    Params = AnchoredMapParams

    def __init__(self, base: StateDict, W: torch.Tensor, C: torch.Tensor, towards: TaskTensors,
                 params: AnchoredMapParams, tasks: int, architecture: dict, family_id: str):
        super().__init__(base, W, C, params, tasks, architecture, family_id)
        bad = towards.problem(base, tasks)
        if bad is not None:
            raise StoreError(f"family {family_id}: {TOWARDS} lacks or misshapes some task's tensor of {bad}")
        if towards.bits != params.towards_bits:
            raise StoreError(f"family {family_id}: {TOWARDS} holds {towards.bits}-bit targets, kind_params say "
                             f"{params.towards_bits}")
        self.towards, self.q = towards, params.anchor

    @classmethod
    def load(cls, path: Path, params: FeatureMapParams, tasks: list[str], architecture: dict,
             family_id: str) -> "AnchoredMapFamily":
        if not isinstance(params, AnchoredMapParams):
            raise StoreError(f"family {family_id}: an anchored-map family needs its `anchor` in kind_params")
        W, C = read_maps(path, family_id)
        base, stored = read_base(path, architecture, family_id), load_state_dict(path / TOWARDS)
        towards = TaskTensors.read(stored, base, tasks, params.towards_bits)
        return cls(base, W, C, towards, params, len(tasks), architecture, family_id)

    def variant(self, weights: Weights) -> AnchoredVariant:
        return weights, anchor_of(weights, self.q)

    def describe(self, variant: AnchoredVariant) -> dict[str, Any]:
        weights, anchor = variant
        return {"preference": list(weights), "anchor": None if anchor is None else list(anchor)}

    def materialize(self, variant: AnchoredVariant, device: torch.device = torch.device("cpu")
                    ) -> Iterator[tuple[str, torch.Tensor]]:
        """tower(p) with its map folded into proj, one tensor at a time, computed on `device`."""
        weights, anchor = variant
        W = preference_map(self.W, self.C, weights, device)
        W = towards_identity(W, torch.tensor(0.0 if anchor is None else anchor[1], device=device))
        yield from folded(((name, anchored_tensor(name, w.to(device), self.towards, anchor))
                           for name, w in self.base.items()), W)

    def resident_bytes(self, dtype: torch.dtype, stored: dict[str, int]) -> dict[str, int]:
        return super().resident_bytes(dtype, stored) | {TOWARDS: 0}  # the targets stay in host memory

    def host_bytes(self, stored: dict[str, int]) -> dict[str, int]:
        return {TOWARDS: self.towards.nbytes}  # as stored

    def on_device(self, device: torch.device) -> "AnchoredMapFamily":
        return self.moved(base={k: v.to(device) for k, v in self.base.items()}, towards=self.towards.to(device))

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> AnchoredMapServable:
        return AnchoredMapServable(self, heads, device, dtype, cache_bytes, graphs)
