"""Isotropic merging (Marczak et al., "No Task Left Behind", ICML 2025), both variants.

- Iso-C: per linear layer, the task-arithmetic sum M = sum_t delta_t = U S V^T with its spectrum
  flattened to the mean singular value: mean(S) U V^T (every direction of the common subspace
  counts alike, so no task's is drowned by the dominant ones).
- Iso-CTS: the top `common_fraction` of M's singular directions (the common subspace), plus for
  each task the top directions of its delta projected off the common subspace (the rest of the
  rank, split evenly between tasks); the concatenated bases are orthogonalised and the spectrum
  flattened to its mean, as in Iso-C.
theta = theta0 + alpha * merged.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..pool import add_scaled
from .linear_layers import FALLBACK_HELP, merge_layers, polar
from .registry import MergeContext, MethodConfig, register


class IsoConfig(MethodConfig):
    scale: float = Field(1.0, ge=0, description="alpha in theta0 + alpha * merged")


class IsoCtsConfig(IsoConfig):
    common_fraction: float = Field(0.8, ge=0, le=1, description="Iso-CTS: the fraction of each layer's rank kept "
                                                                "for the common subspace")


def iso_c_matrix(deltas: list[torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(torch.stack(deltas).float().sum(0), full_matrices=False)
    return s.mean() * u @ vh


def subspace_sizes(rank: int, tasks: int, common_fraction: float) -> tuple[int, int]:
    """(common, per task): the task-specific rest is a multiple of the number of tasks."""
    per_task = round((rank - int(rank * common_fraction)) / tasks)
    return rank - per_task * tasks, per_task


def iso_cts_matrix(deltas: list[torch.Tensor], common_fraction: float) -> torch.Tensor:
    deltas = [d.float() for d in deltas]
    common, per_task = subspace_sizes(min(deltas[0].shape), len(deltas), common_fraction)
    u, s, vh = torch.linalg.svd(torch.stack(deltas).sum(0), full_matrices=False)
    us, ss, vhs = [u[:, :common]], [s[:common]], [vh[:common]]
    if per_task > 0:
        off_common = torch.eye(len(u), dtype=u.dtype) - us[0] @ us[0].T
        for d in deltas:
            ut, st, vht = torch.linalg.svd(off_common @ d, full_matrices=False)
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vhs.append(vht[:per_task])
    return torch.cat(ss).mean() * polar(torch.cat(us, dim=1)) @ polar(torch.cat(vhs, dim=0))


@register("iso-c", IsoConfig, "Iso-C: the task-arithmetic sum with a flat spectrum. " + FALLBACK_HELP)
def iso_c(ctx: MergeContext, config: IsoConfig):
    return add_scaled(ctx.pool.pretrained, [merge_layers(ctx.pool.streamed_task_vectors(), iso_c_matrix, "iso-c", ctx.progress)], [config.scale])


@register("iso-cts", IsoCtsConfig, "Iso-CTS: Iso-C on a common subspace plus each task's own directions. "
          + FALLBACK_HELP)
def iso_cts(ctx: MergeContext, config: IsoCtsConfig):
    merged = merge_layers(ctx.pool.streamed_task_vectors(), lambda deltas: iso_cts_matrix(deltas, config.common_fraction),
                          "iso-cts", ctx.progress)
    return add_scaled(ctx.pool.pretrained, [merged], [config.scale])
