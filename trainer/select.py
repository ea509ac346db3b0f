"""Preference for an unseen task (Pareto Merging paper, section 4.3).

The new task has unlabeled images and no place in the family's preference. Try `samples`
Dirichlet(1) preferences plus the equal preference and the vertices; for each, the mean
prediction entropy of the materialised tower on the images, with the new task's head when there
is one, else averaged over the family's heads (as POST /select does); keep the preference with
the lowest entropy (lower entropy stands in for higher accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from models_store.checkpoint import load_state_dict
from models_store.family import Family
from models_store.preference import Preference
from models_store.simplex import selection_candidates
from models_store.tower import head_logits
from models_store.zoo import Head

from .evaluate import Evaluator
from .objective import entropy


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


def entropies(family: Family, heads: list[Head], images: torch.Tensor, prefs: list[Preference],
              device: torch.device) -> torch.Tensor:
    """The mean prediction entropy on `images` under each preference's tower, averaged over `heads`,
    [len(prefs)] on the device (the towers merged there, evaluated through the one evaluator)."""
    evaluator = Evaluator(family.manifest.architecture, {}, {}, device)
    for head in heads:
        if head.weight.shape[1] != evaluator.tower.output_dim:
            raise ValueError(f"the head has dimension {head.weight.shape[1]} but the family's tower outputs "
                             f"{evaluator.tower.output_dim} features")
    heads, images = [h.to(device) for h in heads], images.to(device)
    out = []
    for pref in prefs:
        features = evaluator.features(dict(family.iter_materialized(pref, device)), images)
        out.append(torch.stack([entropy(head_logits(features, h.weight, h.bias)) for h in heads]).mean())
    return torch.stack(out)


def select_preference(family: Family, heads: list[Head], images: torch.Tensor, samples: int = 30, seed: int = 0,
                      device: torch.device = torch.device("cpu")) -> Selection:
    if len(images) == 0:
        raise ValueError("no images to select a preference on")
    prefs = selection_candidates(family.tasks, samples, seed)
    return Selection([Trial(p, e) for p, e in zip(prefs, entropies(family, heads, images, prefs, device).tolist())])


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
