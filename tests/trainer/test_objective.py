"""The test-time objectives: entropy, the imbalance (diversity) term, and PM's loss terms."""
import math

import torch

from trainer.methods.adamerging import LayerwiseMerge

from trainer.objective import TaskObjectives, entropy, imbalance
from trainer.families.pareto.model import ParetoMerge
from trainer.families.pareto.train import ParetoConfig, loss_terms


def test_imbalance_is_zero_for_spread_predictions_and_log_c_for_one_class():
    classes = 10
    spread = torch.eye(classes).repeat(3, 1) * 50  # confident, every class equally often
    one_class = torch.zeros(30, classes)
    one_class[:, 3] = 50
    assert imbalance(spread).item() == pytest_approx(0.0)
    assert imbalance(one_class).item() == pytest_approx(math.log(classes))
    assert entropy(torch.zeros(4, classes)).item() == pytest_approx(math.log(classes))


def pytest_approx(value: float):
    import pytest
    return pytest.approx(value, abs=1e-4)


def class_shares(diversity_weight: float) -> torch.Tensor:
    """Entropy minimisation of a linear 5-class classifier on 256 unlabeled points, its bias
    starting in favour of class 0; returns the share of the points each class gets at the end."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    weight = torch.nn.Parameter(torch.randn(8, 5) * 0.1)
    bias = torch.nn.Parameter(torch.tensor([1.0, 0, 0, 0, 0]))
    opt = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(300):
        logits = x @ weight + bias
        loss = entropy(logits) + diversity_weight * imbalance(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.bincount((x @ weight + bias).argmax(-1), minlength=5) / len(x)


def test_diversity_term_keeps_entropy_minimisation_from_piling_onto_one_class():
    alone = class_shares(0.0)
    assert alone.max() > 0.4 and alone.min() < 0.05  # entropy alone: one class takes over
    guarded = class_shares(1.0)
    assert guarded.min() > 0.1 and guarded.max() < 0.3  # about 1/5 each


def test_loss_terms_add_the_weighted_imbalance():
    gen = torch.Generator().manual_seed(0)
    pretrained = {"w": torch.randn(6, 4, generator=gen)}
    vectors = {t: {"w": torch.randn(6, 4, generator=gen) * 0.1} for t in ("a", "b")}
    model = ParetoMerge(LayerwiseMerge(pretrained, vectors, 0.3, torch.device("cpu")), vectors, ["w"], rank=2, init=0.3, lowrank_init="kaiming", generator=gen,
                        device=torch.device("cpu"))
    with torch.no_grad():
        model.G[0].normal_(generator=gen)
    objectives = TaskObjectives(entropy=torch.tensor([0.7, 1.3]), imbalance=torch.tensor([0.2, 0.5]))
    pref = torch.tensor([0.25, 0.75])
    without = loss_terms(objectives, pref, model, ParetoConfig(diversity_weight=0.0))
    with_ = loss_terms(objectives, pref, model, ParetoConfig(diversity_weight=2.0))
    assert with_["loss"].item() == pytest_approx(without["loss"].item() + 2.0 * 0.7)
    assert with_["imbalance"].item() == pytest_approx(0.7)
    # the other terms as the paper writes them
    stch = 0.1 * math.log(math.exp(0.25 * 0.7 / 0.1) + math.exp(0.75 * 1.3 / 0.1))
    assert without["stch"].item() == pytest_approx(stch)
    assert without["norm"].item() == pytest_approx(model.G[0].pow(2).sum().item())
