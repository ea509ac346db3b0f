"""WUDI merging (Cheng et al., "Whoever Started the Interference Should End It", ICML 2025).

Data-free: a linear layer's task vectors span (approximately) the inputs of that layer, so the
interference of a merged delta tau on task i is measured by (tau - tau_i) tau_i^T. Per linear
layer, tau minimises

    sum_i ||(tau - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2

from tau = sum_i tau_i, by Adam (the paper: 300 steps, lr 1e-5). theta = theta0 + alpha * tau.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..pool import add_scaled
from .linear_layers import FALLBACK_HELP, merge_layers
from .registry import MergeContext, MethodConfig, register


class WudiConfig(MethodConfig):
    steps: int = Field(300, ge=0, description="Adam steps per linear layer")
    lr: float = Field(1e-5, gt=0, description="Adam's learning rate")
    scale: float = Field(1.0, ge=0, description="alpha in theta0 + alpha * merged (WUDI: 1, no rescaling)")


def interference(merged: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i ||(merged - tau_i) tau_i^T||_F^2, deltas [T, m, n]."""
    return (((merged[None] - deltas) @ deltas.transpose(1, 2)).square().sum((1, 2)) * weights).sum()


def wudi_matrix(deltas: list[torch.Tensor], steps: int, lr: float, device: torch.device) -> torch.Tensor:
    stacked = torch.stack(deltas).float().to(device)
    weights = 1.0 / stacked.flatten(1).square().sum(1).clamp(min=1e-30)
    merged = torch.nn.Parameter(stacked.sum(0))
    optimizer = torch.optim.Adam([merged], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            interference(merged, stacked, weights).backward()
            optimizer.step()
    return merged.detach().cpu()


@register("wudi", WudiConfig, "WUDI: per linear layer, the delta that least interferes with each task vector's "
          "own subspace (data-free, by Adam). " + FALLBACK_HELP)
def wudi(ctx: MergeContext, config: WudiConfig):
    merged = merge_layers(ctx.pool.streamed_task_vectors(), lambda deltas: wudi_matrix(deltas, config.steps, config.lr, ctx.device),
                          "wudi", ctx.progress)
    return add_scaled(ctx.pool.pretrained, [merged], [config.scale])
