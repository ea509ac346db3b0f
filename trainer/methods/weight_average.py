"""Weight averaging: the mean of the fine-tuned towers (= theta0 + mean of the task vectors)."""
from ..pool import add_scaled
from .registry import MergeContext, MethodConfig, register


class WeightAverageConfig(MethodConfig):
    pass


@register("weight-average", WeightAverageConfig, "mean of the fine-tuned towers")
def weight_average(ctx: MergeContext, config: WeightAverageConfig):
    vectors = list(ctx.pool.task_vectors.values())
    return add_scaled(ctx.pool.pretrained, vectors, [1.0 / len(vectors)] * len(vectors))
