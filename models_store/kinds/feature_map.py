"""Kind `feature-map` (ReACT): a base tower plus, per task t, a correction W_t of its output
features and that task's calibration matrix C_t. For a preference p the correction is

    W_p = (sum_t p_t W_t C_t) (sum_t p_t C_t)^-1        (d x d)

applied to the tower's projected features before they are normalised: f_p = W_p f, with
f = pool(x) @ proj. At a one-hot preference W_p = W_t.

Files: `base.safetensors` (the base merged tower) and `maps.safetensors`: "W" [K, d, d] and
"C" [K, d, d], float32. kind_params: `dim` (d, the features' size).

Serving is per image and exact in one forward pass: the base tower's features of every image go
through its own preference's W_p (one solve per distinct preference of a batch, kept in a bounded
cache). A download folds W_p into the output projection, proj_p = proj W_p^T (f_p = x proj_p), so
the checkpoint is a plain open_clip tower that loads with strict=True.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import torch
from pydantic import BaseModel, Field

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..tower import head_logits, load_tower
from ..zoo import Head

NAME = "feature-map"
BASE = "base.safetensors"
MAPS = "maps.safetensors"
FILES = (BASE, MAPS)
PROJ = "proj"
MAPS_CACHED = 64  # preference maps kept on the device (d x d each: 1 MiB at d = 512)


class FeatureMapParams(BaseModel):
    dim: int = Field(ge=1, description="d: the size of the tower's output features")


def preference_map(W: torch.Tensor, C: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """W_p = (sum_t p_t W_t C_t)(sum_t p_t C_t)^-1, W and C [K, d, d], pref [K] -> [d, d] (float32)."""
    pref = pref.to(W.device, torch.float32)
    numerator = torch.einsum("k,kij,kjl->il", pref, W, C)
    denominator = torch.einsum("k,kij->ij", pref, C)
    return torch.linalg.solve(denominator, numerator, left=False)  # numerator @ denominator^-1


def family_files(base: StateDict, W: torch.Tensor, C: torch.Tensor) -> dict[str, StateDict]:
    return {BASE: base, MAPS: {"W": W.float().contiguous(), "C": C.float().contiguous()}}


class MappedTower:
    """The base tower, then each image's preference map on its features."""

    def __init__(self, tower: torch.nn.Module, W: torch.Tensor, C: torch.Tensor, heads: dict[str, Head],
                 device: torch.device, dtype: torch.dtype):
        self.tower = tower.to(device=device, dtype=dtype).eval()
        self.W, self.C = W.to(device, torch.float32), C.to(device, torch.float32)
        self.heads = {t: h.to(device, torch.float32) for t, h in heads.items()}
        self.device, self.dtype = device, dtype
        self.maps: OrderedDict[tuple[float, ...], torch.Tensor] = OrderedDict()
        self.solved = 0  # maps computed (a cache miss each)

    def preference_map(self, pref: torch.Tensor) -> torch.Tensor:
        key = tuple(pref.tolist())
        if key in self.maps:
            self.maps.move_to_end(key)
            return self.maps[key]
        self.solved += 1
        self.maps[key] = preference_map(self.W, self.C, pref)
        if len(self.maps) > MAPS_CACHED:
            self.maps.popitem(last=False)
        return self.maps[key]

    @torch.inference_mode()
    def features(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W], prefs [N, K] -> corrected features [N, d], float32."""
        if images.shape[1] == 1:  # grayscale preprocess (channels=1): the patch conv takes RGB
            images = images.expand(-1, 3, -1, -1)
        features = self.tower(images.to(self.device, self.dtype)).float()
        out = torch.empty_like(features)
        distinct, inverse = torch.unique(prefs.float().cpu(), dim=0, return_inverse=True)
        for i, pref in enumerate(distinct):
            rows = (inverse == i).nonzero().flatten().to(self.device)
            out[rows] = features[rows] @ self.preference_map(pref).T
        return out

    def logits(self, images: torch.Tensor, prefs: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images, prefs)
        return {t: head_logits(feats, h.weight, h.bias) for t, h in self.heads.items()}


class FeatureMapFamily:
    name = NAME
    files = FILES
    Params = FeatureMapParams

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
        maps = load_state_dict(path / MAPS)
        if set(maps) != {"W", "C"}:
            raise StoreError(f"family {family_id}: {MAPS} must hold exactly W and C, has {sorted(maps)}")
        return cls(load_state_dict(path / BASE), maps["W"], maps["C"], params, len(tasks), architecture, family_id)

    def tower_specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.base.items()]

    def iter_materialized(self, pref: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """The base tower with W_p folded into proj: x proj W_p^T = W_p f."""
        for name, w in self.base.items():
            if name == PROJ:
                w = (w.float() @ preference_map(self.W, self.C, pref).T).to(w.dtype)
            yield name, w

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype, cache: int) -> MappedTower:
        # the maps are d x d, cached up to MAPS_CACHED; no tower is materialised (`cache` unused)
        return MappedTower(load_tower(self.architecture, self.base), self.W, self.C, heads, device, dtype)
