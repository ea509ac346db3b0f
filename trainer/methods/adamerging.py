"""Layer-wise AdaMerging and AdaMerging++ (Yang et al. 2024).

One coefficient per parameter tensor per task, initialised to 0.3 and clamped to [0, 1]; the
pretrained weight keeps coefficient 1. Minimises the sum over tasks of the mean prediction entropy
on unlabeled test batches with Adam (lr 1e-3). ++ uses TIES-preprocessed task vectors.
With `preference`, the loss is sum_k w_k H_k with w_k = K * pref_k / sum(pref) (methods/preference.py):
"AdaMerging + preference" of the Pareto Merging paper, one whole optimisation per preference. The
equal preference (and no preference) gives w_k = 1: plain AdaMerging.
"""
from __future__ import annotations

import torch
from pydantic import Field
from models_store.checkpoint import StateDict

from ..entropy_loop import FrozenTower, optimise
from ..pool import TaskVector
from .preference import ParsedPreference, preference_field, task_weights
from .registry import MergeContext, MethodConfig, register
from .ties import ties_preprocess


class AdaMergingConfig(MethodConfig):
    steps: int = Field(500, ge=0, description="optimisation steps (AdaMerging: of its coefficients; WUDI: per linear layer)")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    batch_size: int = Field(16, ge=1, description="unlabeled images per task per step")
    init: float = Field(0.3, ge=0, le=1, description="initial coefficient of every task vector")
    preference: ParsedPreference = preference_field("each task's entropy")


class AdaMergingPlusConfig(AdaMergingConfig):
    ties_k: float = Field(20.0, gt=0, le=100, description="TIES trim: percent of entries kept")


class LayerwiseMerge(torch.nn.Module):
    """theta[P] = theta0[P] + sum_k lambda[P, k] * tau_k[P], with lambda learnable."""

    def __init__(self, pretrained: StateDict, vectors: dict[str, TaskVector], init: float, device: torch.device):
        super().__init__()
        self.keys = list(next(iter(vectors.values())))
        self.pretrained = {k: v.to(device) for k, v in pretrained.items()}
        self.stacked = {k: torch.stack([vectors[t][k] for t in vectors]).to(device) for k in self.keys}
        self.coefficients = torch.nn.Parameter(torch.full((len(self.keys), len(vectors)), init, device=device))

    def forward(self) -> StateDict:
        state = dict(self.pretrained)
        for i, k in enumerate(self.keys):
            tv = self.stacked[k]
            state[k] = self.pretrained[k] + torch.tensordot(self.coefficients[i], tv, dims=1)
        return state

    @torch.no_grad()
    def clamp_(self) -> None:
        self.coefficients.clamp_(0.0, 1.0)


def entropy_loss(merge: LayerwiseMerge, frozen: FrozenTower, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k H_k on the next unlabeled minibatches (the device part of a step)."""
    return (weights * frozen.objectives(merge()).entropy).sum()


def learn_coefficients(ctx: MergeContext, vectors: dict[str, TaskVector], config: AdaMergingConfig) -> LayerwiseMerge:
    """The optimised merge: `coefficients` [T, K] over `keys` (one row per parameter tensor)."""
    pool = ctx.pool
    weights = torch.tensor(task_weights(config.preference, pool.tasks), device=ctx.device)
    merge = LayerwiseMerge(pool.pretrained, vectors, config.init, ctx.device)
    frozen = FrozenTower(pool, ctx.unlabeled, config.batch_size, ctx.seed, ctx.device)
    optimizer = torch.optim.Adam(merge.parameters(), lr=config.lr)

    def step():
        loss = entropy_loss(merge, frozen, weights)
        return loss, {"loss": f"{loss.item():.3f}"}

    optimise(step, optimizer, merge.clamp_, config.steps, desc="adamerging", progress=ctx.progress)
    return merge


def adamerge(ctx: MergeContext, vectors: dict[str, TaskVector], config: AdaMergingConfig) -> StateDict:
    merge = learn_coefficients(ctx, vectors, config)
    with torch.no_grad():
        return {k: v.detach().cpu().to(ctx.pool.pretrained[k].dtype) for k, v in merge().items()}


@register("adamerging", AdaMergingConfig, "layer-wise AdaMerging: entropy-minimised task-vector coefficients "
          "(+ preference: entropies weighted by K pref_k, one optimisation per preference)",
          needs_data=True)
def adamerging(ctx: MergeContext, config: AdaMergingConfig):
    return adamerge(ctx, ctx.pool.task_vectors, config)


@register("adamerging++", AdaMergingPlusConfig, "AdaMerging on TIES-preprocessed task vectors", needs_data=True)
def adamerging_plus(ctx: MergeContext, config: AdaMergingPlusConfig):
    return adamerge(ctx, ties_preprocess(ctx.pool.task_vectors, config.ties_k), config)
