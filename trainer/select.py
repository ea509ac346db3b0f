"""Preference for an unseen task (Pareto Merging paper, section 4.3).

The new task has unlabeled images and a head but no place in the family's preference. Try
`samples` Dirichlet(1) preferences plus the equal preference and the vertices; for each, the
mean prediction entropy of the materialised tower with the new task's head on the images; keep
the preference with the lowest entropy (lower entropy stands in for higher accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from models_store.checkpoint import load_state_dict
from models_store.family import Family
from models_store.preference import Preference, equal_preference
from models_store.tower import head_logits
from models_store.zoo import Head

from .evaluate import Evaluator
from .objective import entropy
from .simplex import dirichlet_samples, unique, vertices


@dataclass(frozen=True)
class Trial:
    preference: Preference
    entropy: float


@dataclass(frozen=True)
class Selection:
    trials: list[Trial]

    @property
    def best(self) -> Trial:
        return min(self.trials, key=lambda t: t.entropy)  # first of equals: the order tried


def candidates(tasks: list[str], samples: int, seed: int) -> list[Preference]:
    """The equal preference, the vertices, then `samples` seeded Dirichlet(1) draws."""
    return unique([equal_preference(tasks), *vertices(tasks), *dirichlet_samples(tasks, samples, seed)])


def read_head(path: str | Path) -> Head:
    """A head file of the zoo contract: safetensors with "weight" [C, D] and optional "bias" [C]."""
    state = load_state_dict(path)
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or weight.dim() != 2:
        raise ValueError(f"head {path} needs a 2-D 'weight' tensor [classes, dim]; found {sorted(state)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"head {path}: 'bias' has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
    return Head(weight=weight, bias=bias)


def family_head(family: Family, task: str) -> Head:
    if task not in family.heads:
        raise ValueError(f"family {family.family_id} has no task {task!r}; tasks are: {', '.join(family.tasks)}")
    return family.heads[task]


def entropies(family: Family, head: Head, images: torch.Tensor, prefs: list[Preference],
              device: torch.device) -> torch.Tensor:
    """The mean prediction entropy of `head` on `images` under each preference's tower, [len(prefs)]
    on the device (the towers merged there, evaluated through the one evaluator)."""
    evaluator = Evaluator(family.manifest.architecture, {}, {}, device)
    if head.weight.shape[1] != evaluator.tower.output_dim:
        raise ValueError(f"the head has dimension {head.weight.shape[1]} but the family's tower outputs "
                         f"{evaluator.tower.output_dim} features")
    head, images = head.to(device), images.to(device)
    out = []
    for pref in prefs:
        features = evaluator.features(dict(family.iter_materialized(pref, device)), images)
        out.append(entropy(head_logits(features, head.weight, head.bias)))
    return torch.stack(out)


def select_preference(family: Family, head: Head, images: torch.Tensor, samples: int = 30, seed: int = 0,
                      device: torch.device = torch.device("cpu")) -> Selection:
    if len(images) == 0:
        raise ValueError("no images to select a preference on")
    prefs = candidates(family.tasks, samples, seed)
    return Selection([Trial(p, e) for p, e in zip(prefs, entropies(family, head, images, prefs, device).tolist())])


def selection_table(selection: Selection) -> str:
    best = selection.best
    lines = ["| preference | entropy (nats) | |", "|---|---|---|"]
    for t in selection.trials:
        lines.append(f"| {t.preference.canonical} | {t.entropy:.4f} | {'lowest' if t is best else ''} |")
    return "\n".join(lines)


def selection_json(selection: Selection, family: Family, **context: Optional[str | int]) -> dict:
    best = selection.best
    return {"family_id": family.family_id, "tasks": family.tasks, **context,
            "selected": {"preference": best.preference.canonical, "weights": best.preference.as_dict(),
                         "entropy": best.entropy},
            "trials": [{"preference": t.preference.canonical, "weights": t.preference.as_dict(),
                        "entropy": t.entropy} for t in selection.trials]}
