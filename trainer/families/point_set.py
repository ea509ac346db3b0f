"""What the point-set learners share: their points, and publishing members as a point-set family."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from pydantic import Field

from models_store.family import FamilyManifest, now_iso, publish_family
from models_store.kinds import point_set

from ..simplex import PointSet
from .registry import LearnContext, LearnerConfig


class PointsConfig(LearnerConfig):
    points: PointSet = Field(default_factory=PointSet, description=(
        "the members' preferences, as `pmerge front` chooses them: grid=N (simplex grid, vertices included), "
        "random=M (Dirichlet(1) draws), seed=S; the equal and the 0.7-on-one-task preferences always"))


def kind_params(pick: str, sense: str, members: list[point_set.Member], merge_vectors: bool) -> dict:
    """`merge_vectors` only where true: a family without it reads in a pmerge from before it."""
    params = point_set.PointSetParams(pick=pick, sense=sense, members=members, merge_vectors=merge_vectors)
    return params.model_dump(exclude=set() if merge_vectors else {"merge_vectors"})


def publish_point_set(ctx: LearnContext, family_id: str, method: str, config: LearnerConfig,
                      members: list[point_set.Member], per_tensor: dict[int, dict[str, torch.Tensor]],
                      began: float, pick: str = "nearest", sense: str = "max", metrics: dict | None = None,
                      merge_vectors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Publish the members with the zoo's theta0 and task vectors (in its dtype): self-contained.
    With `merge_vectors` ({task: {param: v}}), the members' merges combine those instead."""
    zoo, pool = ctx.zoo, ctx.pool
    manifest = FamilyManifest(
        family_id=family_id, created=now_iso(), method=method,
        hyperparameters=config.model_dump() | {"unlabeled": ctx.unlabeled_specs}, zoo=str(zoo.root.resolve()),
        architecture=zoo.manifest.architecture, preprocess=zoo.manifest.preprocess, tasks=zoo.manifest.tasks,
        kind=point_set.NAME, kind_params=kind_params(pick, sense, members, merge_vectors is not None),
        metrics={"train_seconds_this_run": round(time.perf_counter() - began, 2), "members": len(members)}
        | (metrics or {}))
    files = point_set.family_files(pool.pretrained, pool.task_vectors, per_tensor, merge_vectors)
    return publish_family(ctx.store, manifest, files, pool.heads)

