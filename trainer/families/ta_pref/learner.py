"""Task arithmetic + preference (the Pareto Merging paper's baseline) as a servable family: one
merge theta0 + s sum_k K p_k tau_k per point (kind point-set, task-level coefficients)."""
from __future__ import annotations

from pydantic import Field

from models_store.kinds.point_set import Member
from models_store.preference import Preference

from ...methods.preference import task_weights
from ..point_set import PointsConfig, point_set_family
from ..registry import LearnContext, register_family


class TaPrefConfig(PointsConfig):
    scale: float = Field(0.3, ge=0, description="s in theta0 + s sum_k K p_k tau_k (task arithmetic's, 0.3 for CLIP)")


def members_at(prefs: list[Preference], scale: float, tasks: list[str]) -> list[Member]:
    """One task-arithmetic + preference member per preference (the one convention, task_weights)."""
    return [Member(preference=list(p.weights), coefficients=[scale * w for w in task_weights(p, tasks)]) for p in prefs]


@register_family("ta-pref", TaPrefConfig, "task arithmetic + preference at each point (kind point-set)")
def learn(ctx: LearnContext, config: TaPrefConfig):
    tasks = ctx.zoo.tasks
    return point_set_family(ctx, members_at(config.points.preferences(tasks), config.scale, tasks))
