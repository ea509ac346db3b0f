"""TIES-merging (Yadav et al. 2023), as the reference implementation does it.

1. trim: keep the top-k% entries of each task vector by magnitude, flattened over all merged
   parameters (one global threshold per task), zero the rest;
2. elect: per entry, the sign of the sum of the trimmed vectors;
3. disjoint mean: per entry, the mean over the tasks whose trimmed value is non-zero and has the
   elected sign. theta = theta0 + s * merged.
Work is per tensor after the thresholds, so memory stays at the task vectors themselves.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..pool import TaskVector, add_scaled
from .registry import MergeContext, MethodConfig, register


class TiesConfig(MethodConfig):
    ties_k: float = Field(20.0, gt=0, le=100, description="TIES trim: percent of each task vector's entries kept by magnitude")
    scale: float = Field(0.3, ge=0, description="s in theta0 + s * merged")


def magnitude_threshold(vector: TaskVector, k: float) -> torch.Tensor | float:
    """The smallest magnitude among the top-k% entries of the whole flattened task vector (a 0-dim
    tensor where the vector is: no trip to the host)."""
    flat = torch.cat([v.abs().flatten() for v in vector.values()])
    keep = max(1, int(round(flat.numel() * k / 100.0)))
    if keep >= flat.numel():
        return 0.0
    # kthvalue of the (n - keep + 1)-th smallest = keep-th largest
    return flat.kthvalue(flat.numel() - keep + 1).values


def trim(vector: TaskVector, k: float) -> TaskVector:
    threshold = magnitude_threshold(vector, k)
    return {name: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for name, v in vector.items()}


def elect_sign(trimmed: list[torch.Tensor]) -> torch.Tensor:
    total = torch.stack(trimmed).sum(0)
    return torch.where(total >= 0, 1.0, -1.0)


def agreeing(trimmed: list[torch.Tensor], sign: torch.Tensor) -> list[torch.Tensor]:
    """Each trimmed vector with the entries that disagree with the elected sign zeroed."""
    return [torch.where((t != 0) & (torch.sign(t) == sign), t, torch.zeros_like(t)) for t in trimmed]


def ties_preprocess(vectors: dict[str, TaskVector], k: float) -> dict[str, TaskVector]:
    """Trimmed, sign-agreeing task vectors (the input of AdaMerging++ and PM++)."""
    trimmed = {t: trim(v, k) for t, v in vectors.items()}
    tasks = list(trimmed)
    out: dict[str, TaskVector] = {t: {} for t in tasks}
    for name in trimmed[tasks[0]]:
        per_task = [trimmed[t][name] for t in tasks]
        for t, v in zip(tasks, agreeing(per_task, elect_sign(per_task))):
            out[t][name] = v
    return out


def disjoint_mean(vectors: dict[str, TaskVector], k: float) -> TaskVector:
    kept = ties_preprocess(vectors, k)
    merged: TaskVector = {}
    for name in next(iter(kept.values())):
        stacked = torch.stack([v[name] for v in kept.values()])
        count = (stacked != 0).sum(0).clamp(min=1)
        merged[name] = stacked.sum(0) / count
    return merged


@register("ties", TiesConfig, "TIES-merging: trim, elect sign, disjoint mean")
def ties(ctx: MergeContext, config: TiesConfig):
    return add_scaled(ctx.pool.pretrained, [disjoint_mean(ctx.pool.task_vectors, config.ties_k)], [config.scale])
