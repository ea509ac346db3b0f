"""Kind `anchored-map` (ReACT anchored at the fine-tuned towers): a feature-map family
(kinds/feature_map.py) whose tower moves towards fine-tuned tower k where the preference puts
more than `anchor` (q >= 0.5) on task k:

    k = argmax_t p_t,   a(p) = max(0, (p_k - q) / (1 - q)), rounded to ANCHOR_DECIMALS
    tower(p) = base + a (theta_k - base)          f_p = ((1 - a) W_p + a I) f

so for p_k <= q it is the feature-map family (ReACT), and at the vertex of k it is fine-tuned tower
k itself; in between, both the weights and the map move along a straight line. Files: those of
feature-map and `towards.safetensors`: "<task>/<P>" = theta_task[P] - base[P] for every float P of
the base, in the base's dtype. kind_params: `dim` and `anchor`.

Serving: the base tower once for the images whose preferences need no anchoring, one anchored
tower per distinct (k, a) for the others (materialised on the device), then each image's map;
towers and maps share one DeviceCache, so the family keeps at most its bound, whichever it holds.
A download is tower(p) with its map folded into proj, as feature-map's: a plain open_clip tower.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from pydantic import Field

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..tower import build_tower
from ..zoo import Head
from .base import DeviceCache, tensor_bytes
from ..preference import canonical_weights
from .feature_map import (BASE, MAPS, FeatureMapFamily, FeatureMapParams, FeatureMapServable, MapPlan, folded,
                          preference_map, read_maps)

NAME = "anchored-map"
TOWARDS = "towards.safetensors"
FILES = (BASE, MAPS, TOWARDS)
ANCHOR_DECIMALS = 3
TOWER = "tower"  # the first element of a tower's key in the cache (a map's key is its preference)

Anchor = Optional[tuple[int, float]]  # (task index k, a > 0), or None: the base tower


class AnchoredMapParams(FeatureMapParams):
    anchor: float = Field(ge=0.5, lt=1.0, description="q: above this weight on one task, the tower moves towards "
                                                      "that task's fine-tuned tower")


def anchor_of(pref: tuple[float, ...] | list[float], q: float) -> Anchor:
    """(k, a) of a preference, or None where no weight exceeds q."""
    weights = canonical_weights(pref)  # float32 or 64: one anchor
    k = max(range(len(weights)), key=weights.__getitem__)
    a = round(max(0.0, (weights[k] - q) / (1.0 - q)), ANCHOR_DECIMALS)
    return None if a == 0.0 else (k, a)


def family_files(base: StateDict, W: torch.Tensor, C: torch.Tensor, towards: dict[str, StateDict]) -> dict[str, StateDict]:
    """towards {task: {P: theta_task[P] - base[P]}}, stored in the base's dtype."""
    return {BASE: base, MAPS: {"W": W.float().contiguous(), "C": C.float().contiguous()},
            TOWARDS: {f"{t}/{p}": v.to(base[p].dtype).contiguous() for t, vs in towards.items() for p, v in vs.items()}}


@dataclass(frozen=True)
class AnchoredPlan(MapPlan):
    """MapPlan, plus each distinct preference's anchor and the batch's rows per tower."""
    anchors: list[Anchor]
    towers: list[tuple[Anchor, list[int]]]


class AnchoredMapServable(FeatureMapServable):
    def __init__(self, tower: torch.nn.Module, W: torch.Tensor, C: torch.Tensor, towards: dict[str, torch.Tensor],
                 architecture: dict, anchor: float, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False):
        super().__init__(tower, W, C, heads, device, dtype, cache_bytes, graphs)
        self.q, self.architecture = anchor, architecture
        self.base = {k: v.to(self.device) for k, v in tower.state_dict().items()}
        self.towards = {k: v.to(self.device) for k, v in towards.items()}  # P -> [K, ...]
        # one cache for the maps (keyed by preference) and the towers (keyed by TOWER, k, a): the
        # family keeps at most cache_bytes on the device, whichever it holds
        self.maps = self.towers = DeviceCache(cache_bytes, self._forget)
        self._made = itertools.count()
        self.materialized = 0  # anchored towers materialised so far (tests, benchmarks)

    @property
    def solved(self) -> int:
        return self.maps.misses - self.materialized

    def plan(self, prefs: torch.Tensor) -> AnchoredPlan:
        plan = super().plan(prefs)
        anchors = [anchor_of(key, self.q) for key in plan.distinct]
        per_image = [anchors[i] for i in plan.inverse]
        towers = [(a, [n for n, b in enumerate(per_image) if b == a]) for a in dict.fromkeys(per_image)]
        return AnchoredPlan(plan.distinct, plan.inverse, anchors, towers)

    def _forget(self, evicted) -> None:
        if isinstance(evicted, torch.nn.Module) and self.graphed is not None:
            self.graphed.forget(evicted.graph_key)

    def anchored_tower(self, anchor: tuple[int, float]) -> torch.nn.Module:
        key = (TOWER, *anchor)
        tower = self.towers.get(key)
        if tower is not None:
            return tower
        state = anchored_state(self.base, self.towards, anchor)
        nbytes = tensor_bytes(v for v in state.values())
        self.towers.room(nbytes)
        tower = build_tower(self.architecture).to(self.device, self.dtype).eval()
        tower.load_state_dict(state)
        tower.graph_key = (TOWER, next(self._made))
        self.materialized += 1
        return self.towers.put(key, tower, nbytes)

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

    def solve(self, keys: list[tuple[float, ...]]) -> torch.Tensor:
        a = [0.0 if (x := anchor_of(key, self.q)) is None else x[1] for key in keys]
        return towards_identity(super().solve(keys), torch.tensor(a, device=self.device))


def towards_identity(maps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(1 - a) W_p + a I for maps [..., d, d] and a [...] (0: the map itself, 1: the identity)."""
    eye = torch.eye(maps.shape[-1], device=maps.device)
    return (1 - a)[..., None, None] * maps + a[..., None, None] * eye


def anchored_tensor(name: str, w: torch.Tensor, towards: dict[str, torch.Tensor], anchor: Anchor) -> torch.Tensor:
    """base[name] + a (theta_k - base)[name], in float32 then the base's dtype; the base's without an anchor."""
    if anchor is None or name not in towards:
        return w
    k, a = anchor
    return (w.float() + a * towards[name][k].to(w.device).float()).to(w.dtype)


def anchored_state(base: StateDict, towards: dict[str, torch.Tensor], anchor: Anchor) -> StateDict:
    return {name: anchored_tensor(name, w, towards, anchor) for name, w in base.items()}


class AnchoredMapFamily(FeatureMapFamily):
    name = NAME
    files = FILES
    Params = AnchoredMapParams

    def __init__(self, base: StateDict, W: torch.Tensor, C: torch.Tensor, towards: dict[str, torch.Tensor],
                 params: AnchoredMapParams, tasks: int, architecture: dict, family_id: str):
        super().__init__(base, W, C, params, tasks, architecture, family_id)
        missing = [p for p, w in base.items() if w.is_floating_point() and p not in towards]
        wrong = [p for p, v in towards.items() if p not in base or v.shape != (tasks, *base[p].shape)]
        if missing or wrong:
            raise StoreError(f"family {family_id}: {TOWARDS} lacks or misshapes some task's tensor of "
                             f"{(missing or wrong)[0]}")
        self.towards, self.q = towards, params.anchor

    @classmethod
    def load(cls, path: Path, params: FeatureMapParams, tasks: list[str], architecture: dict,
             family_id: str) -> "AnchoredMapFamily":
        if not isinstance(params, AnchoredMapParams):
            raise StoreError(f"family {family_id}: an anchored-map family needs its `anchor` in kind_params")
        W, C = read_maps(path, family_id)
        base, stored = load_state_dict(path / BASE), load_state_dict(path / TOWARDS)
        towards = {p: torch.stack([stored[f"{t}/{p}"] for t in tasks]) for p in base
                   if all(f"{t}/{p}" in stored for t in tasks)}
        return cls(base, W, C, towards, params, len(tasks), architecture, family_id)

    def iter_materialized(self, pref: torch.Tensor, device: torch.device = torch.device("cpu")
                          ) -> Iterator[tuple[str, torch.Tensor]]:
        """tower(p) with its map folded into proj, one tensor at a time, computed on `device`. The
        anchor is host work, done at the call (not at the first tensor)."""
        weights = pref.cpu().tolist()
        return self._anchored(weights, anchor_of(weights, self.q), device)

    def _anchored(self, weights: list[float], anchor: Anchor, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        W = preference_map(self.W, self.C, weights, device)
        W = towards_identity(W, torch.tensor(0.0 if anchor is None else anchor[1], device=device))
        yield from folded(((name, anchored_tensor(name, w.to(device), self.towards, anchor))
                           for name, w in self.base.items()), W)

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> AnchoredMapServable:
        from ..tower import load_tower
        return AnchoredMapServable(load_tower(self.architecture, self.base), self.W, self.C, self.towards,
                                   self.architecture, self.q, heads, device, dtype, cache_bytes, graphs)
