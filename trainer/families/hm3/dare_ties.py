"""HM3's parameter level: DARE (drop and rescale) then TIES (trim, elect, keep the agreeing
entries) on each task vector, so that

    theta(lambda) = theta0 + alpha sum_k lambda_k M_k * delta_k

is task arithmetic over fixed vectors v_k = M_k * delta_k. The sign is elected on the unweighted
sum, so the vectors do not depend on lambda and one set of them serves every preference."""
from __future__ import annotations

import torch

from ...methods.ties import ties_preprocess
from ...pool import TaskVector


def dare(vector: TaskVector, drop: float, generator: torch.Generator) -> TaskVector:
    """Each entry dropped with probability `drop`, the survivors rescaled by 1 / (1 - drop)."""
    if drop == 0:
        return dict(vector)
    out = {}
    for name, v in vector.items():  # drawn on the CPU in a fixed order: the same masks on every device
        keep = torch.rand(v.shape, generator=generator) >= drop
        out[name] = torch.where(keep.to(v.device), v / (1.0 - drop), torch.zeros_like(v))
    return out


def dare_ties(vectors: dict[str, TaskVector], drop: float, trim: float, seed: int) -> dict[str, TaskVector]:
    """{task: v_task}: DARE with its own seeded generator per task, then TIES with `trim` percent of
    each vector's entries kept by magnitude (at drop >= 1 - trim/100 the trim keeps every survivor:
    only the sign election acts)."""
    dropped = {t: dare(v, drop, torch.Generator().manual_seed(seed * 1009 + i)) for i, (t, v) in enumerate(vectors.items())}
    return ties_preprocess(dropped, trim)

