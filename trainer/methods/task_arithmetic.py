"""Task arithmetic (Ilharco et al. 2023): theta0 + s * sum_k tau_k.

With a preference ("task arithmetic + preference", the Pareto Merging paper's baseline):
theta0 + s * sum_k w_k tau_k with w_k = K * pref_k / sum(pref) (see methods/preference.py), so the
equal preference is exactly plain task arithmetic and a one-hot preference gives theta0 + s K tau_k.
"""
from pydantic import Field

from ..pool import add_scaled
from .preference import ParsedPreference, preference_field, task_weights
from .registry import MergeContext, MethodConfig, register


class TaskArithmeticConfig(MethodConfig):
    scale: float = Field(0.3, ge=0, description="s in theta0 + s * merged task vector (task arithmetic: the sum, "
                                                 "0.3 the usual choice for CLIP)")
    preference: ParsedPreference = preference_field("each task vector")


@register("task-arithmetic", TaskArithmeticConfig, "theta0 + s * sum of task vectors (+ preference: "
          "theta0 + s * sum_k K pref_k tau_k)")
def task_arithmetic(ctx: MergeContext, config: TaskArithmeticConfig):
    vectors = ctx.pool.task_vectors
    weights = task_weights(config.preference, list(vectors))
    return add_scaled(ctx.pool.pretrained, list(vectors.values()), [config.scale * w for w in weights])
