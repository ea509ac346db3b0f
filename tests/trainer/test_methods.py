"""Each merging method against small tensors whose merged result is computed by hand."""
from types import SimpleNamespace

import pytest
import torch

from trainer.methods import METHODS, MergeContext, get_method
from trainer.methods.ties import TiesConfig, disjoint_mean, magnitude_threshold, ties_preprocess, trim

PRETRAINED = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -0.5])}
VECTORS = {
    "a": {"w": torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "b": torch.tensor([0.2, 0.1])},
    "b": {"w": torch.tensor([[3.0, 1.0], [-0.5, 0.0]]), "b": torch.tensor([-0.4, 0.3])},
}


def context() -> MergeContext:
    pool = SimpleNamespace(pretrained=PRETRAINED, task_vectors=VECTORS, tasks=list(VECTORS))
    return MergeContext(pool=pool, progress=False)


def test_registry_lists_every_baseline():
    assert {"weight-average", "task-arithmetic", "ties", "adamerging", "adamerging++"} <= set(METHODS)
    with pytest.raises(KeyError, match="unknown merging method 'nope'"):
        get_method("nope")


def test_weight_average_is_mean_of_finetuned():
    out = get_method("weight-average")(context())
    # finetuned_a = P + a, finetuned_b = P + b; mean = P + (a + b) / 2
    assert torch.allclose(out["w"], torch.tensor([[3.0, 1.5], [3.0, 4.0]]))
    assert torch.allclose(out["b"], torch.tensor([0.4, -0.3]))


def test_task_arithmetic_scales_the_sum():
    m = get_method("task-arithmetic")
    out = m(context(), m.config(scale=0.5))
    assert torch.allclose(out["w"], torch.tensor([[3.0, 1.5], [3.0, 4.0]]))
    out = m(context())  # default s = 0.3
    assert torch.allclose(out["b"], torch.tensor([0.5 - 0.06, -0.5 + 0.12]))


def test_trim_keeps_top_k_percent_over_all_tensors():
    # a's 6 magnitudes: 1, 2, .5, 0, .2, .1 -> top 50% (3 entries) are 2, 1, .5
    assert magnitude_threshold(VECTORS["a"], 50) == 0.5
    t = trim(VECTORS["a"], 50)
    assert torch.equal(t["w"], torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    assert torch.equal(t["b"], torch.tensor([0.0, 0.0]))


def test_ties_elects_signs_and_takes_disjoint_mean():
    # k = 50: a keeps w 1, -2, .5 ; b keeps w 3, 1, and one of the 0.5/-0.5/0.4 (b: |.4| < |.5|):
    # b's magnitudes 3, 1, .5, 0, .4, .3 -> top 3 are 3, 1, .5 -> keeps w[1,0] = -.5
    merged = disjoint_mean(VECTORS, 50)
    # w[0,0]: 1, 3 -> + -> mean 2 ; w[0,1]: -2, 1 -> sum -1 -> elected -, only -2 agrees -> -2
    # w[1,0]: .5, -.5 -> sum 0 -> elected + (ties go to +) -> .5 ; w[1,1]: 0
    assert torch.allclose(merged["w"], torch.tensor([[2.0, -2.0], [0.5, 0.0]]))
    assert torch.allclose(merged["b"], torch.zeros(2))
    out = get_method("ties")(context(), TiesConfig(ties_k=50, scale=0.5))
    assert torch.allclose(out["w"], PRETRAINED["w"] + 0.5 * merged["w"])


def test_ties_preprocess_zeroes_disagreeing_entries_per_task():
    kept = ties_preprocess(VECTORS, 50)
    assert torch.allclose(kept["a"]["w"], torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    assert torch.allclose(kept["b"]["w"], torch.tensor([[3.0, 0.0], [0.0, 0.0]]))


def test_method_configs_reject_bad_values():
    with pytest.raises(ValueError):
        TiesConfig(ties_k=0)
    with pytest.raises(ValueError):
        get_method("task-arithmetic").config(scle=1.0)
