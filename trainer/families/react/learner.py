"""ReACT (AAAI 2026, no public code; REFERENCE.md): a representation-space correction of a fixed
merged tower, per preference, in closed form (kind feature-map).

Per task t, from unlabeled calibration images (the tasks' unlabeled images, as Pareto Merging
uses), the projected features of the merged tower Z_mtl [d, N] and of task t's fine-tuned tower
Z_ind [d, N] give

    W_t = (Z_ind Z_mtl^T + beta W_orth) (Z_mtl Z_mtl^T + beta I)^-1,    C_t = Z_mtl Z_mtl^T + beta I,

W_orth = U V^T the orthogonal Procrustes map (U S V^T = Z_ind Z_mtl^T): a ridge regression from
the merged features to the fine-tuned ones, shrunk towards a rotation. A preference p gets
W_p = (sum_t p_t W_t C_t)(sum_t p_t C_t)^-1 (models_store/kinds/feature_map.py), which is W_t at
the vertex of t. The maps act on the features before they are normalised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from pydantic import Field

from models_store.checkpoint import StateDict
from models_store.kinds import anchored_map, feature_map
from models_store.task_tensors import Bits, stored_tensors
from models_store.tower import build_tower

from ...methods import MergeContext, get_method
from ...memory import release_freed_memory
from ...progress import progress_bar
from ..pareto.train import BaseName
from ..registry import LearnContext, Learned, LearnerConfig, register_family


class ReactConfig(LearnerConfig):
    base: BaseName = Field("tsv-m", description=(
        "react: the fixed merged tower the maps correct, a merge of `pmerge merge` with its defaults"))
    beta: float = Field(0.1, gt=0, description="react: the ridge beta, pulling each map towards its rotation")
    calibration: int = Field(2048, ge=1, description="react: unlabeled calibration images per task (at most)")
    seed: int = 0


@torch.inference_mode()
def projected_features(tower: torch.nn.Module, images: torch.Tensor, device: torch.device,
                       batch: int = 256) -> torch.Tensor:
    """[N, C, H, W] -> [d, N], float64 (the tower's output before normalisation); `tower` on `device`."""
    out = [tower(images[i:i + batch].to(device)).double() for i in range(0, len(images), batch)]
    return torch.cat(out).T.cpu()


def task_map(z_mtl: torch.Tensor, z_ind: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_t, C_t), [d, d] each, from the two towers' features [d, N]."""
    cross = z_ind @ z_mtl.T
    u, _, vh = torch.linalg.svd(cross)
    c = z_mtl @ z_mtl.T + beta * torch.eye(len(z_mtl), dtype=z_mtl.dtype)
    w = torch.linalg.solve(c, cross + beta * (u @ vh), left=False)
    return w, c


@dataclass
class ReactParts:
    merged: StateDict  # the base tower
    W: torch.Tensor  # [K, d, d]
    C: torch.Tensor  # [K, d, d]
    seconds: float  # the preference stage: features and solves


def streamed_tower(zoo, task: str) -> torch.nn.Module:
    """Task's fine-tuned tower, its tensors copied in one at a time from the zoo's file."""
    tower = build_tower(zoo.manifest.architecture)
    params = tower.state_dict()
    with torch.no_grad():
        for key, value in zoo.stream_finetuned(task):
            params[key].copy_(value)
    return tower


def react_maps(zoo, merged: StateDict, unlabeled: dict[str, torch.Tensor], beta: float, calibration: int, seed: int,
               device: torch.device, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [K, d, d], C [K, d, d]) float32: every task's map and calibration matrix for the base tower
    `merged`, from at most `calibration` of each task's unlabeled images (drawn with `seed`); one
    fine-tuned tower in memory at a time."""
    base_tower = build_tower(zoo.manifest.architecture)
    base_tower.load_state_dict(merged, assign=True)  # the merged tensors themselves: no second copy
    base_tower = base_tower.to(device).eval()
    if base_tower.proj is None:
        raise ValueError("ReACT folds its maps into the tower's output projection `proj`; this tower has none")
    generator = torch.Generator().manual_seed(seed)
    maps, grams = [], []
    for task in progress_bar(zoo.tasks, desc="react: calibration features and maps", unit="task",
                             disable=not progress):
        images = unlabeled[task]
        chosen = torch.randperm(len(images), generator=generator)[:calibration]
        z_mtl = projected_features(base_tower, images[chosen], device)
        finetuned = streamed_tower(zoo, task).to(device).eval()
        z_ind = projected_features(finetuned, images[chosen], device)
        del finetuned
        release_freed_memory()
        w, c = task_map(z_mtl, z_ind, beta)
        maps.append(w.float())
        grams.append(c.float())
    return torch.stack(maps), torch.stack(grams)


def react_parts(ctx: LearnContext, config: ReactConfig) -> ReactParts:
    merged = get_method(config.base)(MergeContext(pool=ctx.pool, unlabeled=ctx.unlabeled, device=ctx.device,
                                                  seed=config.seed, progress=ctx.progress))
    ctx.pool.release()  # the merge is all this learner needs of the pool
    release_freed_memory()
    stage = time.perf_counter()
    W, C = react_maps(ctx.zoo, merged, ctx.unlabeled, config.beta, config.calibration, config.seed, ctx.device,
                      ctx.progress)
    return ReactParts(merged, W, C, time.perf_counter() - stage)


def react_metrics(parts: ReactParts, config: ReactConfig) -> dict:
    return {"preference_stage_seconds": round(parts.seconds, 2), "calibration_images": config.calibration}


@register_family("react", ReactConfig, "ReACT: per-task closed-form corrections of a fixed merge's features, "
                 "mixed per preference (kind feature-map)")
def learn(ctx: LearnContext, config: ReactConfig):
    parts = react_parts(ctx, config)
    return Learned(kind=feature_map.NAME, kind_params=feature_map.FeatureMapParams(dim=parts.W.shape[-1]).model_dump(),
                   files=feature_map.family_files(parts.merged, parts.W, parts.C), metrics=react_metrics(parts, config))


class AnchoredConfig(ReactConfig):
    anchor: float = Field(0.7, ge=0.5, lt=1.0, description=(
        "react-anchored: q; where one task weighs more than q the tower moves towards that task's fine-tuned tower, "
        "reaching it at the task's vertex"))
    towards_bits: Bits = Field(4, description=(
        "react-anchored: bits per parameter of each task's fine-tuned tower, stored as its difference from the base: "
        "2, 4 or 8 quantised in groups of 64, 32 dense"))


@register_family("react-anchored", AnchoredConfig, "ReACT anchored at the fine-tuned towers: ReACT where no task "
                 "weighs more than --anchor, fine-tuned tower k at the vertex of k, a straight line between "
                 "(kind anchored-map)")
def learn_anchored(ctx: LearnContext, config: AnchoredConfig):
    parts = react_parts(ctx, config)
    merged = parts.merged
    towards: StateDict = {}
    stage = progress_bar(ctx.zoo.tasks, desc=f"react-anchored: {config.towards_bits}-bit targets", unit="task",
                         disable=not ctx.progress)
    for t in stage:  # one tensor of one fine-tuned tower in memory at a time, beside the targets made so far
        for key, value in ctx.zoo.stream_finetuned(t):
            if merged[key].is_floating_point():
                delta = {key: value.float() - merged[key].float()}
                towards |= stored_tensors("", t, delta, merged, config.towards_bits)
        release_freed_memory()  # the task's temporaries, before the next task's
    params = anchored_map.AnchoredMapParams(dim=parts.W.shape[-1], anchor=config.anchor,
                                            towards_bits=config.towards_bits)
    return Learned(kind=anchored_map.NAME, kind_params=params.model_dump(),
                   files=anchored_map.family_files(parts.merged, parts.W, parts.C, towards),
                   metrics=react_metrics(parts, config))
