"""Test-time objectives shared by AdaMerging and Pareto Merging, from a merged tower's predictions
on unlabeled images (computed through `torch.func.functional_call`): per-task prediction entropy,
and the imbalance of the predictions across classes (Pareto Merging's diversity term)."""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch.func import functional_call

from models_store.tower import head_logits
from models_store.zoo import Head


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def imbalance(logits: torch.Tensor) -> torch.Tensor:
    """KL(mean prediction || uniform) over a batch (nats): 0 when the batch's predictions spread
    evenly over the classes, log C when every image gets the same class (SHOT's diversity term)."""
    mean = torch.softmax(logits.float(), dim=-1).mean(0)
    return math.log(mean.numel()) + (mean * mean.clamp_min(1e-12).log()).sum()


class TaskObjectives(NamedTuple):
    entropy: torch.Tensor    # [K] mean prediction entropy per task
    imbalance: torch.Tensor  # [K] KL(mean prediction || uniform) per task


def autocast(device: torch.device):
    """bf16 autocast on a GPU, nothing on the CPU (bf16 matmuls there are slow and imprecise)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def task_objectives(tower: torch.nn.Module, state: dict[str, torch.Tensor], heads: dict[str, Head],
                    batches: dict[str, torch.Tensor]) -> TaskObjectives:
    """Entropy and imbalance of every task: one forward pass over all tasks' batches, same weights."""
    tasks = list(batches)
    images = torch.cat([batches[t] for t in tasks])
    with autocast(images.device):
        features = functional_call(tower, state, (images,))
    logits = [head_logits(feats.float(), heads[t].weight, heads[t].bias)
              for t, feats in zip(tasks, features.split([len(batches[t]) for t in tasks]))]
    return TaskObjectives(torch.stack([entropy(x) for x in logits]), torch.stack([imbalance(x) for x in logits]))


class UnlabeledSampler:
    """Random minibatches per task from unlabeled images; its state can be saved for --resume."""

    def __init__(self, unlabeled: dict[str, torch.Tensor], batch_size: int, seed: int, device: torch.device):
        self.unlabeled = unlabeled
        self.batch_size = batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> dict[str, torch.Tensor]:
        out = {}
        for task, images in self.unlabeled.items():
            idx = torch.randint(len(images), (min(self.batch_size, len(images)),), generator=self.generator)
            out[task] = images[idx].to(self.device, non_blocking=True)
        return out
