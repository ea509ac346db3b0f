"""AdaMerging + preference (the Pareto Merging paper's baseline) as a servable family: one whole
AdaMerging optimisation per point, its entropies weighted by K p_k (kind point-set, per-tensor
coefficients). Each finished point is saved, so a killed run resumes at the next one."""
from __future__ import annotations

import torch
from pydantic import Field

from models_store.checkpoint import load_state_dict, save_state_dict
from models_store.kinds.point_set import Member

from ...methods import MergeContext
from ...methods.adamerging import AdaMergingConfig, learn_coefficients
from ..point_set import PointsConfig, point_set_family
from ..registry import LearnContext, register_family


class AdaPrefConfig(PointsConfig):
    steps: int = Field(100, ge=0, description="AdaMerging steps per point (as `pmerge front --baseline-steps`)")
    lr: float = Field(1e-3, gt=0, description="Adam's lr for the coefficients")
    batch_size: int = Field(16, ge=1, description="unlabeled images per task per step")
    init: float = Field(0.3, ge=0, le=1, description="initial task-vector coefficients")
    seed: int = 0


@register_family("adamerging-pref", AdaPrefConfig, "AdaMerging + preference, one optimisation per point "
                 "(kind point-set)")
def learn(ctx: LearnContext, config: AdaPrefConfig):
    prefs = config.points.preferences(ctx.zoo.tasks)
    progress_file = ctx.run_dir / "members.safetensors"  # the points done so far
    done: dict[str, torch.Tensor] = load_state_dict(progress_file) if ctx.resume and progress_file.is_file() else {}
    merge_ctx = MergeContext(pool=ctx.pool, unlabeled=ctx.unlabeled, device=ctx.device, seed=config.seed,
                             progress=ctx.progress)
    per_tensor: dict[int, dict[str, torch.Tensor]] = {}
    for i, pref in enumerate(prefs):
        saved = {k.partition("/")[2]: v for k, v in done.items() if k.partition("/")[0] == str(i)}
        if saved:
            per_tensor[i] = saved
            continue
        print(f"adamerging-pref: point {i + 1}/{len(prefs)}, preference {pref}", flush=True)
        method = AdaMergingConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size, init=config.init,
                                  preference=pref)
        merge = learn_coefficients(merge_ctx, ctx.pool.task_vectors, method)
        per_tensor[i] = {k: merge.coefficients[j].detach().cpu().clone() for j, k in enumerate(merge.keys)}
        done |= {f"{i}/{k}": c for k, c in per_tensor[i].items()}
        progress_file.parent.mkdir(parents=True, exist_ok=True)
        save_state_dict(progress_file, done)
    members = [Member(preference=list(p.weights), per_tensor=True) for p in prefs]
    return point_set_family(ctx, config, members, per_tensor)
