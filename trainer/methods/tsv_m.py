"""TSV-M, Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025).

Per linear layer, each task's delta keeps its top singular triplets (a fraction 1/T of the rank
each, by default); the kept left and right singular vectors of all tasks are concatenated and
orthogonalised (each replaced by its polar factor, which removes the interference between tasks'
subspaces), and the merged delta is U_perp diag(S) V_perp^T. theta = theta0 + alpha * merged.
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from ..pool import add_scaled
from .linear_layers import FALLBACK_HELP, merge_layers, polar
from .registry import MergeContext, MethodConfig, register


class TsvConfig(MethodConfig):
    kept_fraction: Optional[float] = Field(None, gt=0, le=1, description=(
        "TSV-M: the fraction of each task's singular triplets kept per layer (default 1/T)"))
    scale: float = Field(1.0, ge=0, description="alpha in theta0 + alpha * merged")


def tsv_matrix(deltas: list[torch.Tensor], kept_fraction: float) -> torch.Tensor:
    keep = max(1, int(min(deltas[0].shape) * kept_fraction))
    us, ss, vhs = zip(*(torch.linalg.svd(d.float(), full_matrices=False) for d in deltas))
    u = torch.cat([x[:, :keep] for x in us], dim=1)
    s = torch.cat([x[:keep] for x in ss])
    vh = torch.cat([x[:keep] for x in vhs], dim=0)
    return polar(u) @ torch.diag(s) @ polar(vh)


@register("tsv-m", TsvConfig, "TSV-M: each task's top singular vectors, orthogonalised across tasks. " + FALLBACK_HELP)
def tsv_m(ctx: MergeContext, config: TsvConfig):
    vectors = ctx.pool.streamed_task_vectors()
    fraction = config.kept_fraction or 1.0 / len(vectors)
    merged = merge_layers(vectors, lambda deltas: tsv_matrix(deltas, fraction), "tsv-m", ctx.progress)
    return add_scaled(ctx.pool.pretrained, [merged], [config.scale])
