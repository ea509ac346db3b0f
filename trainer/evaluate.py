"""Evaluation: per-task test accuracy of a tower state, and Markdown/JSON reports."""
from __future__ import annotations

from typing import Mapping

import torch

from models_store.checkpoint import StateDict
from models_store.tower import build_tower, head_logits
from models_store.zoo import Head

from .data import TaskData

Scores = dict[str, float]


@torch.no_grad()
def accuracy(tower: torch.nn.Module, head: Head, data: TaskData, device: torch.device, batch_size: int = 512) -> float:
    correct = 0
    head = head.to(device)
    for images, labels in zip(data.images.split(batch_size), data.labels.split(batch_size)):
        logits = head_logits(tower(images.to(device)).float(), head.weight, head.bias)
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
    return correct / len(data.labels)


def evaluate_state(architecture: dict, state: StateDict, heads: Mapping[str, Head],
                   test: Mapping[str, TaskData], device: torch.device) -> Scores:
    """Accuracy of one tower on every task."""
    return evaluate_tower(build_tower(architecture), state, heads, test, device)


def evaluate_tower(tower: torch.nn.Module, state: StateDict, heads: Mapping[str, Head],
                   test: Mapping[str, TaskData], device: torch.device) -> Scores:
    """As evaluate_state, reusing a built tower: loops over many states build it once."""
    tower.load_state_dict(state, strict=True)
    tower.to(device).eval()
    return {t: accuracy(tower, heads[t], test[t], device) for t in test}


def with_average(scores: Scores) -> Scores:
    return scores | {"average": sum(scores.values()) / len(scores)}


def markdown_table(rows: Mapping[str, Scores], tasks: list[str], extra: Mapping[str, Mapping[str, str]] = {}) -> str:
    """One row per model, one column per task (accuracy in %), then the average and extra columns."""
    extra_cols = sorted({c for e in extra.values() for c in e})
    head = ["model", *tasks, "average", *extra_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, scores in rows.items():
        cells = [name] + [f"{100 * scores[t]:.1f}" if t in scores else "" for t in tasks]
        avg = [scores[t] for t in tasks if t in scores]
        cells.append(f"{100 * sum(avg) / len(avg):.1f}" if avg else "")
        cells += [extra.get(name, {}).get(c, "") for c in extra_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
