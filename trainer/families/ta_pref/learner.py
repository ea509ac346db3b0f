"""Task arithmetic + preference (the Pareto Merging paper's baseline) as a servable family: one
merge theta0 + s sum_k K p_k tau_k per point (kind point-set, task-level coefficients), and the
same formula at every preference asked (`at_preference`)."""
from __future__ import annotations

from pydantic import Field

from models_store.kinds.point_set import Member, TaskArithmeticRule
from models_store.preference import Preference
from models_store.task_tensors import Bits

from ...methods.preference import task_weights
from ..point_set import VECTOR_BITS, PointsConfig, point_set_family
from ..registry import LearnContext, register_family


class TaPrefConfig(PointsConfig):
    scale: float = Field(0.3, ge=0, description="s in theta0 + s sum_k K p_k tau_k (task arithmetic's, 0.3 for CLIP)")
    at_preference: bool = Field(True, description="serve every preference with its own merge (false: the nearest "
                                                  "of the points)")
    vector_bits: Bits = Field(4, description=VECTOR_BITS)  # it measures nothing: its members are its formula's


def members_at(prefs: list[Preference], scale: float, tasks: list[str]) -> list[Member]:
    """One task-arithmetic + preference member per preference (the one convention, task_weights)."""
    return [Member(preference=list(p.weights), coefficients=[scale * w for w in task_weights(p, tasks)]) for p in prefs]


@register_family("ta-pref", TaPrefConfig, "task arithmetic + preference at each point (kind point-set)")
def learn(ctx: LearnContext, config: TaPrefConfig):
    tasks = ctx.zoo.tasks
    rule = TaskArithmeticRule(scale=config.scale) if config.at_preference else None
    return point_set_family(ctx, config, members_at(config.points.preferences(tasks), config.scale, tasks), at_preference=rule)
