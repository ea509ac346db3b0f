"""A quick micro zoo, built in about a second, for the trainer tests and the fake-CUDA tier.

`make_quick_zoo` skips `pmerge zoo`'s training (tests/trainer/test_cli_pipeline.py covers it): the
pretrained tower is a seeded random micro tower, each fine-tuned tower is it plus a seeded
perturbation, and each head holds the class means of the pretrained features (a nearest-class-mean
classifier, so accuracies are above chance and differ between merges). Tasks: digits, shapes, glyphs.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from models_store.preprocess import Preprocess
from models_store.tower import MICRO, build_tower, image_size
from models_store.zoo import Head, TaskInfo, Zoo, ZooManifest, write_zoo
from trainer.data import load_dataset

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
