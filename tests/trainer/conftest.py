"""Shared fixtures of the trainer tests: a quick micro zoo (quick_zoo.py) and family, built in about a second."""
from pathlib import Path

import pytest
import torch

from models_store.zoo import Zoo
from quick_zoo import make_quick_zoo
from trainer.families import FAMILIES, LearnContext
from trainer.families.pareto.train import ParetoConfig
from trainer.taskpool import TaskPool


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory) -> Zoo:
    return make_quick_zoo(tmp_path_factory.mktemp("quick-zoo"))


@pytest.fixture(scope="session")
def quick_store(tmp_path_factory, quick_zoo) -> tuple[Path, str]:
    """(store, family id): a PM family trained for a few steps with a large lr, so preferences matter a little."""
    store = tmp_path_factory.mktemp("quick-store")
    ctx = LearnContext(quick_zoo, store, progress=False)
    ctx.unlabeled = TaskPool(quick_zoo, unlabeled_limit=32).unlabeled  # fewer images than the default specs
    cfg = ParetoConfig(steps=6, rank=2, lr=0.02, batch_size=8, checkpoint_every=6)
    path = FAMILIES["pm"](ctx, cfg)
    return store, path.name


@pytest.fixture(scope="session")
def assert_serves_materialised():
    """check(family, prefs [N, K], images [N, C, H, W]): the family's servable answers a mixed batch
    as each preference's materialised tower, a plain open_clip tower, does (1e-4, float32)."""
    from models_store.preference import from_weights
    from models_store.tower import head_logits, load_tower

    def check(family, prefs: torch.Tensor, images: torch.Tensor, model=None) -> None:
        model = model or family.servable(torch.device("cpu"), torch.float32, cache_bytes=2 * family.tower_bytes())
        logits = model.logits(images, family.resolve(prefs))
        for i in range(len(prefs)):
            tower = load_tower(family.manifest.architecture,
                               family.materialize(from_weights(prefs[i].tolist(), family.tasks)))
            with torch.no_grad():
                feats = tower(images[i:i + 1])
            for t, h in family.heads.items():
                assert (logits[t][i] - head_logits(feats, h.weight, h.bias)[0]).abs().max() <= 1e-4, (i, t)
    return check
