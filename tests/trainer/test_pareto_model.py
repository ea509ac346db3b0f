"""The Pareto Merging model's low-rank initialisations."""
import pytest
import torch

from trainer.methods.adamerging import LayerwiseMerge

from trainer.families.pareto.model import ParetoMerge, task_vector_factors


def low_rank_vectors(k: int, d_out: int, d_in: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """K task vectors that share one rank-`rank` column space and one row space."""
    u = torch.linalg.qr(torch.randn(d_out, rank, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(d_in, rank, generator=gen)).Q
    return torch.stack([u @ torch.randn(rank, rank, generator=gen) @ v.T for _ in range(k)])


def test_task_vector_factors_reproduce_task_arithmetic_with_preference():
    gen = torch.Generator().manual_seed(0)
    taus = low_rank_vectors(3, 12, 8, 4, gen)
    a, b, g = task_vector_factors(taus, rank=4, init=0.3)
    assert torch.allclose(a.T @ a, torch.eye(4), atol=1e-5) and torch.allclose(b.T @ b, torch.eye(4), atol=1e-5)
    for pref in ([1 / 3] * 3, [0.7, 0.2, 0.1], [0.0, 0.0, 1.0]):
        p = torch.tensor(pref)
        delta = a @ torch.einsum("k,kij->ij", p, g) @ b.T
        # task arithmetic + preference (lambda_k = K * 0.3 * pref_k) minus the equal merge (lambda_k = 0.3)
        expected = torch.einsum("k,kij->ij", 3 * 0.3 * p - 0.3, taus)
        assert torch.allclose(delta, expected, atol=1e-5), pref
    assert a.abs().sum() > 0 and g.abs().sum() > 0


def test_task_vector_factors_are_zero_at_the_equal_preference_whatever_the_rank():
    gen = torch.Generator().manual_seed(1)
    taus = torch.randn(4, 10, 6, generator=gen)  # full rank: rank 2 keeps only a projection
    a, b, g = task_vector_factors(taus, rank=2, init=0.3)
    equal = a @ g.mean(0) @ b.T
    assert equal.abs().max() < 1e-6
    one_hot = a @ g[0] @ b.T
    assert one_hot.abs().max() > 1e-2  # a vertex steers


@pytest.mark.parametrize("lowrank_init", ["task-vectors", "kaiming"])
def test_both_initialisations_start_at_the_base_merge_for_the_equal_preference(lowrank_init):
    gen = torch.Generator().manual_seed(2)
    pretrained = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(6, generator=gen)}
    vectors = {t: {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in pretrained.items()} for t in "xyz"}
    model = ParetoMerge(LayerwiseMerge(pretrained, vectors, 0.3, torch.device("cpu")), vectors, ["w"], rank=3, init=0.3, lowrank_init=lowrank_init, generator=gen,
                        device=torch.device("cpu"))
    with torch.no_grad():
        equal = model(torch.full((3,), 1 / 3))
        base = model.base()
    assert torch.allclose(equal["w"], base["w"], atol=1e-6) and torch.equal(equal["b"], base["b"])


def test_a_rank_above_the_weight_is_refused():
    pretrained = {"w": torch.zeros(6, 4)}
    vectors = {t: {"w": torch.ones(6, 4)} for t in "xy"}
    with pytest.raises(ValueError, match="rank 5 exceeds the smaller side of w"):
        ParetoMerge(LayerwiseMerge(pretrained, vectors, 0.3, torch.device("cpu")), vectors, ["w"], rank=5, init=0.3, lowrank_init="task-vectors",
                    generator=torch.Generator(), device=torch.device("cpu"))


def test_a_fixed_base_is_where_the_equal_preference_starts_and_training_leaves_it():
    from trainer.families.pareto.model import FixedBase
    gen = torch.Generator().manual_seed(3)
    pretrained = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(6, generator=gen)}
    vectors = {t: {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in pretrained.items()} for t in "xyz"}
    fixed = {k: v + 1.0 for k, v in pretrained.items()}
    model = ParetoMerge(FixedBase(fixed, torch.device("cpu")), vectors, ["w"], rank=3, init=0.3,
                        lowrank_init="task-vectors", generator=gen, device=torch.device("cpu"))
    assert list(model.base.parameters()) == []
    with torch.no_grad():
        equal = model(torch.full((3,), 1 / 3))
        vertex = model(torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(equal["w"], fixed["w"], atol=1e-6) and torch.equal(equal["b"], fixed["b"])
    assert not torch.allclose(vertex["w"], fixed["w"], atol=1e-3)  # the preference term steers around the base
