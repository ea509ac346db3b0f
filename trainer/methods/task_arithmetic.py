"""Task arithmetic (Ilharco et al. 2023): theta0 + s * sum_k tau_k."""
from pydantic import Field

from ..pool import add_scaled
from .registry import MergeContext, MethodConfig, register


class TaskArithmeticConfig(MethodConfig):
    scale: float = Field(0.3, ge=0, description="s in theta0 + s * sum_k tau_k (0.3 is the usual choice for CLIP)")


@register("task-arithmetic", TaskArithmeticConfig, "theta0 + s * sum of task vectors")
def task_arithmetic(ctx: MergeContext, config: TaskArithmeticConfig):
    vectors = list(ctx.pool.task_vectors.values())
    return add_scaled(ctx.pool.pretrained, vectors, [config.scale] * len(vectors))
