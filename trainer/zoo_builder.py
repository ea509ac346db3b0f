"""Build a model zoo from data (issue: `pmerge zoo`).

1. Pretrain a tower, CLIP in miniature: SimCLR-style contrastive learning between two random
   augmentations of each training image (each batch from one task), plus a few captioned images
   per task contrasted with a learned embedding per class name. Those class embeddings are the
   zero-shot heads (normalize(features) @ W^T, the logit scale folded into W).
2. Per task, fine-tune the whole tower with its zero-shot head frozen (Ilharco et al.'s recipe).
Neither stage reads a held-out part of each train split (`holdout`), so the learners that score
merges on labelled data validate on images no tower has seen.
Same seed, same zoo: every random draw comes from generators seeded from `seed`.
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from pydantic import BaseModel, Field
from .progress import progress_bar

from models_store.checkpoint import StateDict
from models_store.preprocess import Preprocess
from models_store.tower import build_tower, head_logits, image_size, resolve_architecture
from models_store.zoo import Head, TaskInfo, TrainingSplit, Zoo, ZooManifest, write_zoo

from .data import DatasetError, TaskData, dataset_classes, load_dataset
from .evaluate import Evaluator

DEMO_TASKS = {"digits": "builtin:digits", "glyphs": "builtin:glyphs", "shapes": "builtin:shapes"}
FASHION = ("fashion", "builtin:fashion")
FOURTH_WITHOUT_FASHION = ("patterns", "builtin:patterns")


class ZooConfig(BaseModel):
    architecture: dict[str, Any]
    tasks: dict[str, str] = Field(min_length=1, description="task name -> dataset spec")
    seed: int = 0
    channels: int = Field(3, description="image channels of the preprocess (1: grayscale)")
    holdout: float = Field(0.1, ge=0, lt=1, description=(
        "class-stratified fraction of each task's train split that no tower trains on (neither pretraining nor "
        "fine-tuning): the unseen labelled validation images of the learners that score merges (MAP, HM3)"))
    train_limit: Optional[int] = Field(4000, description="training images per task (after --holdout)")
    test_limit: Optional[int] = Field(1000, description="test images per task")
    pretrain_steps: int = Field(200, description="contrastive pretraining steps")
    pretrain_batch: int = Field(128, description="pretraining batch")
    pretrain_lr: float = Field(2e-3, description="pretraining learning rate")
    finetune_steps: int = Field(250, description="fine-tuning steps per task")
    finetune_batch: int = Field(64, description="fine-tuning batch")
    finetune_lr: float = Field(1e-3, description="fine-tuning learning rate")
    temperature: float = Field(0.2, description="contrastive temperature")
    caption_images: int = Field(50, ge=1, description="labelled training images per task seen in pretraining")
    caption_temperature: float = Field(0.05, gt=0, description="of the zero-shot heads: logit scale 1/T")


def demo_tasks() -> dict[str, str]:
    """digits, glyphs, shapes and fashion when Debian's dataset-fashion-mnist is installed, else patterns."""
    try:
        dataset_classes(FASHION[1])
        fourth = FASHION
    except DatasetError:
        fourth = FOURTH_WITHOUT_FASHION
    return DEMO_TASKS | {fourth[0]: fourth[1]}


def demo_config(architecture: str = "tiny", seed: int = 0) -> ZooConfig:
    return ZooConfig(architecture=resolve_architecture(architecture), tasks=demo_tasks(), seed=seed)


# ---- 1. contrastive pretraining --------------------------------------------------------------

def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + small rotation via an affine grid, brightness jitter and noise."""
    n = x.shape[0]
    scale = torch.empty(n).uniform_(0.65, 1.0, generator=generator)
    angle = torch.empty(n).uniform_(-0.3, 0.3, generator=generator)
    shift = torch.empty(n, 2).uniform_(-0.2, 0.2, generator=generator)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    out = out * torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=generator)
    return out + 0.15 * torch.randn(out.shape, generator=generator)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-1e9)
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


class ZeroShotClassifier(torch.nn.Module):
    """CLIP's text side in miniature: one learned embedding per class name of every task, compared to
    normalised image features at a fixed temperature. After pretraining, a task's rows are its
    zero-shot head (normalize(features) @ W^T with the logit scale folded into W)."""

    def __init__(self, classes_per_task: list[int], embed: int, temperature: float, generator: torch.Generator):
        super().__init__()
        self.offsets = [0, *itertools.accumulate(classes_per_task)]
        self.embeddings = torch.nn.Parameter(0.1 * torch.randn(self.offsets[-1], embed, generator=generator))
        self.temperature = temperature

    def loss(self, features: torch.Tensor, task: int, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes of ALL tasks, as a caption is contrasted with every other."""
        logits = F.normalize(features, dim=-1) @ F.normalize(self.embeddings, dim=-1).T / self.temperature
        return F.cross_entropy(logits, labels + self.offsets[task])

    @torch.no_grad()
    def heads(self) -> list[Head]:
        weight = F.normalize(self.embeddings, dim=-1) / self.temperature
        return [Head(weight=weight[a:b].clone()) for a, b in zip(self.offsets, self.offsets[1:])]


def pretrain(tower: VisionTransformer, data: list[TaskData], cfg: ZooConfig, generator: torch.Generator) -> list[Head]:
    """Contrastive pretraining plus a few captioned images; returns the zero-shot heads.

    InfoNCE draws every batch from ONE task, in turn: with the tasks mixed, telling datasets apart
    solves most of the objective and each task's features collapse into a narrow cone. The caption
    term pairs `caption_images` labelled images per task with their class embeddings, as CLIP's
    image-text pairs do. Heads from those embeddings (rather than linear probes fitted to the
    pretrained features) leave room for fine-tuning to add: task arithmetic then lands well above
    the zero-shot tower, as it does on CLIP (measured in the README)."""
    embed = tower.proj.shape[1]
    projector = torch.nn.Sequential(torch.nn.Linear(embed, embed), torch.nn.GELU(), torch.nn.Linear(embed, embed))
    classifier = ZeroShotClassifier([len(d.classes) for d in data], embed, cfg.caption_temperature, generator)
    captioned = [torch.randperm(len(d), generator=generator)[:cfg.caption_images] for d in data]
    params = list(tower.parameters()) + list(projector.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=0.05)
    sched = cosine_schedule(opt, cfg.pretrain_steps)
    tower.train()
    bar = progress_bar(range(cfg.pretrain_steps), desc="pretrain (contrastive + captions)", leave=False)
    for step in bar:
        task = step % len(data)
        images = data[task].images
        x = images[torch.randint(len(images), (cfg.pretrain_batch,), generator=generator)]
        contrastive = info_nce(projector(tower(augment(x, generator))), projector(tower(augment(x, generator))),
                               cfg.temperature)
        idx = captioned[task][torch.randint(len(captioned[task]), (cfg.pretrain_batch // 2,), generator=generator)]
        caption = classifier.loss(tower(augment(images[idx], generator)), task, data[task].labels[idx])
        loss = contrastive + caption
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    return classifier.heads()


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


# ---- 2. fine-tuning with a frozen head ------------------------------------------------------

def finetune(pretrained: StateDict, arch: dict, head: Head, data: TaskData, cfg: ZooConfig,
             generator: torch.Generator, desc: str) -> StateDict:
    tower = build_tower(arch)
    tower.load_state_dict(pretrained)
    tower.train()
    opt = torch.optim.AdamW(tower.parameters(), lr=cfg.finetune_lr, weight_decay=0.1)
    sched = cosine_schedule(opt, cfg.finetune_steps)
    bar = progress_bar(range(cfg.finetune_steps), desc=desc, leave=False)
    for _ in bar:
        idx = torch.randint(len(data.labels), (cfg.finetune_batch,), generator=generator)
        loss = F.cross_entropy(head_logits(tower(data.images[idx]), head.weight), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {k: v.detach().clone() for k, v in tower.state_dict().items()}


# ---- the whole recipe -----------------------------------------------------------------------

def build_zoo(out: str | Path, cfg: ZooConfig) -> tuple[Zoo, dict[str, dict[str, float]]]:
    """Build and write a zoo; returns it with its accuracy matrix {model: {task: accuracy}}."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    arch = cfg.architecture
    pre = Preprocess(image_size=image_size(arch), channels=cfg.channels)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train = {t: load_dataset(s, "train", pre, limit=cfg.train_limit, seed=cfg.seed, holdout=cfg.holdout) for t, s in cfg.tasks.items()}
    test = {t: load_dataset(s, "test", pre, limit=cfg.test_limit, seed=cfg.seed) for t, s in cfg.tasks.items()}
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tower = build_tower(arch)
    heads = dict(zip(train, pretrain(tower, list(train.values()), cfg, generator)))
    pretrained = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finetuned = {t: finetune(pretrained, arch, heads[t], d, cfg, generator, f"finetune {t}") for t, d in train.items()}
    timings["finetune_s"] = time.perf_counter() - t0

    evaluator = Evaluator(arch, heads, test, torch.device("cpu"))
    matrix = {"pretrained": evaluator.accuracy(pretrained)}
    for name, state in finetuned.items():
        matrix[f"finetuned:{name}"] = evaluator.accuracy(state)

    manifest = ZooManifest(
        architecture=arch, preprocess=pre,
        tasks=[TaskInfo(name=t, classes=train[t].classes, data=s) for t, s in cfg.tasks.items()],
        training=TrainingSplit(train_limit=cfg.train_limit, seed=cfg.seed, holdout=cfg.holdout),
        metrics={"accuracy": matrix, "timings": timings, "config": cfg.model_dump()})
    return write_zoo(out, manifest, pretrained, finetuned, heads), matrix
