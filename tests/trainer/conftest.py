"""Shared fixtures of the trainer tests: a quick micro zoo and family, built in about a second.

`quick_zoo` skips `pmerge zoo`'s training (tests/trainer/test_cli_pipeline.py covers it): the
pretrained tower is a seeded random micro tower, each fine-tuned tower is it plus a seeded
perturbation, and each head holds the class means of the pretrained features (a nearest-class-mean
classifier, so accuracies are above chance and differ between merges). Tasks: digits, shapes, glyphs.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models_store.preprocess import Preprocess
from models_store.tower import MICRO, build_tower, image_size
from models_store.zoo import Head, TaskInfo, Zoo, ZooManifest, write_zoo
from trainer.data import load_dataset
from trainer.pareto.train import ParetoConfig, train_family
from trainer.taskpool import TaskPool

QUICK_TASKS = {"digits": "builtin:digits", "shapes": "builtin:shapes", "glyphs": "builtin:glyphs"}


@torch.no_grad()
def class_mean_head(tower: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int) -> Head:
    features = F.normalize(tower(images), dim=-1)
    means = torch.stack([features[labels == c].mean(0) if (labels == c).any() else torch.zeros(features.shape[1])
                         for c in range(classes)])
    return Head(weight=20 * F.normalize(means, dim=-1))


def make_quick_zoo(root: Path, tasks: dict[str, str] = QUICK_TASKS, seed: int = 0) -> Zoo:
    torch.manual_seed(seed)
    tower = build_tower(MICRO)
    pretrained = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    pre = Preprocess(image_size=image_size(MICRO))
    infos, finetuned, heads = [], {}, {}
    for i, (name, spec) in enumerate(tasks.items()):
        train = load_dataset(spec, "train", pre, limit=120, seed=seed)
        infos.append(TaskInfo(name=name, classes=train.classes, data=spec))
        noise = torch.Generator().manual_seed(seed + 1 + i)
        finetuned[name] = {k: v + 0.05 * v.std().nan_to_num(0.1) * torch.randn(v.shape, generator=noise)
                           if v.is_floating_point() and v.numel() > 1 else v for k, v in pretrained.items()}
        tower.load_state_dict(finetuned[name])
        heads[name] = class_mean_head(tower, train.images, train.labels, len(train.classes))
    manifest = ZooManifest(architecture=MICRO, preprocess=pre, tasks=infos)
    return write_zoo(root, manifest, pretrained, finetuned, heads)


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory) -> Zoo:
    return make_quick_zoo(tmp_path_factory.mktemp("quick-zoo"))


@pytest.fixture(scope="session")
def quick_store(tmp_path_factory, quick_zoo) -> tuple[Path, str]:
    """(store, family id): a PM family trained for a few steps with a large lr, so preferences matter a little."""
    store = tmp_path_factory.mktemp("quick-store")
    unlabeled = TaskPool(quick_zoo, unlabeled_limit=32).unlabeled
    cfg = ParetoConfig(steps=6, rank=2, lr=0.02, batch_size=8, checkpoint_every=6)
    path = train_family(quick_zoo, store, cfg, unlabeled, {}, torch.device("cpu"), progress=False)
    return store, path.name


@pytest.fixture(scope="session")
def assert_serves_materialised():
    """check(family, prefs [N, K], images [N, C, H, W]): the family's servable answers a mixed batch
    as each preference's materialised tower, a plain open_clip tower, does (1e-4, float32)."""
    from models_store.preference import from_weights
    from models_store.tower import head_logits, load_tower

    def check(family, prefs: torch.Tensor, images: torch.Tensor, model=None) -> None:
        model = model or family.servable(torch.device("cpu"), torch.float32, cache_bytes=2 * family.tower_bytes())
        logits = model.logits(images, prefs)
        for i in range(len(prefs)):
            tower = load_tower(family.manifest.architecture,
                               family.materialize(from_weights(prefs[i].tolist(), family.tasks)))
            with torch.no_grad():
                feats = tower(images[i:i + 1])
            for t, h in family.heads.items():
                assert (logits[t][i] - head_logits(feats, h.weight, h.bias)[0]).abs().max() <= 1e-4, (i, t)
    return check
