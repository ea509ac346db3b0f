"""Test-time objectives shared by AdaMerging and Pareto Merging: per-task prediction entropy of a
merged tower on unlabeled images, computed through `torch.func.functional_call`."""
from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call

from models_store.tower import head_logits
from models_store.zoo import Head


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def autocast(device: torch.device):
    """bf16 autocast on a GPU, nothing on the CPU (bf16 matmuls there are slow and imprecise)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def task_entropies(tower: torch.nn.Module, state: dict[str, torch.Tensor], heads: dict[str, Head],
                   batches: dict[str, torch.Tensor]) -> torch.Tensor:
    """H_k for every task k: one forward pass over all tasks' batches with the same weights."""
    tasks = list(batches)
    images = torch.cat([batches[t] for t in tasks])
    with autocast(images.device):
        features = functional_call(tower, state, (images,))
    out = []
    for task, feats in zip(tasks, features.split([len(batches[t]) for t in tasks])):
        h = heads[task]
        out.append(entropy(head_logits(feats.float(), h.weight, h.bias)))
    return torch.stack(out)


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
