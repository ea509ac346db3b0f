"""Build a model zoo from data (issue: `pmerge zoo`).

1. Pretrain a tower on a generic objective over all tasks' unlabeled training images:
   SimCLR-style contrastive learning between two random augmentations of each image, each batch
   from one task (hard negatives).
2. Per task, train a head on the frozen pretrained features (the analogue of CLIP's zero-shot
   head: normalize(features) @ W^T, with the logit scale folded into W).
3. Per task, fine-tune the whole tower with that head frozen (the recipe of Ilharco et al.).
Same seed, same zoo: every random draw comes from generators seeded from `seed`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm import tqdm

from models_store.checkpoint import StateDict
from models_store.preprocess import Preprocess
from models_store.tower import build_tower, head_logits, image_size, resolve_architecture
from models_store.zoo import Head, TaskInfo, Zoo, ZooManifest, write_zoo

from .data import DatasetError, TaskData, dataset_classes, load_dataset
from .evaluate import accuracy

DEMO_TASKS = {"digits": "builtin:digits", "glyphs": "builtin:glyphs", "shapes": "builtin:shapes"}
FASHION = ("fashion", "builtin:fashion")
FOURTH_WITHOUT_FASHION = ("patterns", "builtin:patterns")


class ZooConfig(BaseModel):
    architecture: dict[str, Any]
    tasks: dict[str, str] = Field(min_length=1, description="task name -> dataset spec")
    seed: int = 0
    channels: int = 3
    train_limit: Optional[int] = 4000
    test_limit: Optional[int] = 1000
    pretrain_steps: int = 200
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    head_steps: int = 300
    finetune_steps: int = 250
    finetune_batch: int = 64
    finetune_lr: float = 1e-3
    temperature: float = 0.2


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


def pretrain(tower: torch.nn.Module, images: list[torch.Tensor], cfg: ZooConfig, generator: torch.Generator) -> None:
    """InfoNCE with every batch drawn from ONE task, in turn: with the tasks mixed, telling datasets
    apart solves most of the objective and each task's features collapse into a narrow cone, which
    leaves heads fragile and task vectors that do not add up."""
    embed = tower.proj.shape[1]
    projector = torch.nn.Sequential(torch.nn.Linear(embed, embed), torch.nn.GELU(), torch.nn.Linear(embed, embed))
    params = list(tower.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=0.05)
    sched = cosine_schedule(opt, cfg.pretrain_steps)
    tower.train()
    bar = tqdm(range(cfg.pretrain_steps), desc="pretrain (contrastive)", leave=False)
    for step in bar:
        pool = images[step % len(images)]
        x = pool[torch.randint(len(pool), (cfg.pretrain_batch,), generator=generator)]
        loss = info_nce(projector(tower(augment(x, generator))), projector(tower(augment(x, generator))),
                        cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


# ---- 2. heads on frozen features ------------------------------------------------------------

@torch.no_grad()
def features(tower: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([F.normalize(tower(x), dim=-1) for x in images.split(batch)])


def train_head(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int) -> Head:
    """Linear classifier on normalised features, no bias; starts at the class-mean prototypes."""
    protos = torch.stack([feats[labels == c].mean(0) for c in range(n_classes)])
    weight = torch.nn.Parameter(10.0 * F.normalize(protos, dim=-1))
    opt = torch.optim.Adam([weight], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(feats @ weight.T, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return Head(weight=weight.detach().clone())


# ---- 3. fine-tuning with a frozen head ------------------------------------------------------

def finetune(pretrained: StateDict, arch: dict, head: Head, data: TaskData, cfg: ZooConfig,
             generator: torch.Generator, desc: str) -> StateDict:
    tower = build_tower(arch)
    tower.load_state_dict(pretrained)
    tower.train()
    opt = torch.optim.AdamW(tower.parameters(), lr=cfg.finetune_lr, weight_decay=0.1)
    sched = cosine_schedule(opt, cfg.finetune_steps)
    bar = tqdm(range(cfg.finetune_steps), desc=desc, leave=False)
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
    train = {t: load_dataset(s, "train", pre, limit=cfg.train_limit, seed=cfg.seed) for t, s in cfg.tasks.items()}
    test = {t: load_dataset(s, "test", pre, limit=cfg.test_limit, seed=cfg.seed) for t, s in cfg.tasks.items()}
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tower = build_tower(arch)
    pretrain(tower, [d.images for d in train.values()], cfg, generator)
    pretrained = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = {t: train_head(features(tower, d.images), d.labels, len(d.classes), cfg.head_steps) for t, d in train.items()}
    timings["heads_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finetuned = {t: finetune(pretrained, arch, heads[t], d, cfg, generator, f"finetune {t}") for t, d in train.items()}
    timings["finetune_s"] = time.perf_counter() - t0

    matrix = {"pretrained": {t: accuracy(tower, heads[t], test[t], torch.device("cpu")) for t in cfg.tasks}}
    for name, state in finetuned.items():
        tower.load_state_dict(state)
        matrix[f"finetuned:{name}"] = {t: accuracy(tower, heads[t], test[t], torch.device("cpu")) for t in cfg.tasks}

    manifest = ZooManifest(
        architecture=arch, preprocess=pre,
        tasks=[TaskInfo(name=t, classes=train[t].classes, data=s) for t, s in cfg.tasks.items()],
        metrics={"accuracy": matrix, "timings": timings, "config": cfg.model_dump()})
    return write_zoo(out, manifest, pretrained, finetuned, heads), matrix
