"""Evaluation, in one place (FusionBench's `taskpool.evaluate(model)` shape): per-task accuracy and
loss of any state of a tower, on labelled data kept on the device, through
`torch.func.functional_call` (the tower is built once; a state is never loaded into it). `eval`,
`front`, `select`, MAP and HM3 use it; `CoefficientEvaluator` evaluates task-arithmetic
coefficient vectors (MAP's design, the front's direct search and ground truth) through it.

The device part of an evaluation ends in tensors (`totals`, `outcomes`, `features`); the host
reads them once per evaluation (`__call__`), never per batch, so a GPU is not stopped at every
batch, and the fake-CUDA tests can run the device part alone. Time goes to one `StageTimer`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from models_store.checkpoint import StateDict
from models_store.tower import task_arithmetic
from models_store.tower import build_tower, head_logits
from models_store.zoo import Head

from .data import TaskData
from .objective import autocast
from .pool import ModelPool

Scores = dict[str, float]


@dataclass
class StageTimer:
    """Wall seconds by stage (the device synchronised at both ends) and counters, for reports."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def by_stage(self) -> dict[str, float]:
        return {name: round(s, 3) for name, s in self.seconds.items()}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class TaskScores:
    accuracy: float
    loss: float  # mean cross-entropy


class Evaluator:
    """A tower of `architecture`, the heads and each task's labelled images, on `device`."""

    def __init__(self, architecture: dict, heads: Mapping[str, Head], data: Mapping[str, TaskData],
                 device: torch.device, batch_size: int = 256, timer: Optional[StageTimer] = None):
        self.device, self.batch_size = torch.device(device), batch_size
        self.tower = build_tower(architecture).to(self.device).eval()
        self.tasks = list(data)
        self.heads = {t: heads[t].to(self.device) for t in self.tasks}
        self.images = {t: data[t].images.to(self.device) for t in self.tasks}
        self.labels = {t: data[t].labels.to(self.device) for t in self.tasks}
        self.timer = timer or StageTimer(self.device)

    # --- the device part: tensors in, tensors out -------------------------------------------------

    def features(self, state: StateDict, images: torch.Tensor) -> torch.Tensor:
        """The tower's output features [N, D], float32, of `images` under `state` (moved to the device)."""
        state = {k: v.to(self.device, non_blocking=True) for k, v in state.items()}
        with torch.inference_mode():
            out = []
            for i in range(0, len(images), self.batch_size):
                batch = images[i:i + self.batch_size].to(self.device, non_blocking=True)
                with autocast(self.device):
                    out.append(functional_call(self.tower, state, (batch,)).float())
            return torch.cat(out) if out else torch.empty(0, self.tower.output_dim, device=self.device)

    def outcomes(self, task: str, features: torch.Tensor, labels: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task `task`'s head on `features` [N, D]: which images it classifies right [N] (bool) and the
        sum of its cross-entropy (a 0-dim tensor)."""
        head = self.heads[task]
        labels = self.labels[task] if labels is None else labels
        logits = head_logits(features, head.weight, head.bias)
        return logits.argmax(-1) == labels, F.cross_entropy(logits, labels, reduction="sum")

    def totals(self, state: StateDict, tasks: Optional[Sequence[str]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per task of `tasks` (default all): images right and summed loss, two [T] tensors on the device."""
        correct, loss = [], []
        for t in tasks or self.tasks:
            right, total = self.outcomes(t, self.features(state, self.images[t]))
            correct.append(right.sum())
            loss.append(total)
        return torch.stack(correct), torch.stack(loss)

    # --- the host part -----------------------------------------------------------------------------

    def __call__(self, state: StateDict, tasks: Optional[Sequence[str]] = None) -> dict[str, TaskScores]:
        """Accuracy and mean loss of `state` on each task of `tasks` (default all): one read of the device."""
        tasks = list(tasks or self.tasks)
        with self.timer.stage("evaluate"):
            correct, loss = (x.tolist() for x in self.totals(state, tasks))
        self.timer.count("task_evaluations", len(tasks))
        return {t: TaskScores(c / len(self.labels[t]), l / len(self.labels[t])) for t, c, l in zip(tasks, correct, loss)}

    def accuracy(self, state: StateDict, tasks: Optional[Sequence[str]] = None) -> Scores:
        return {t: s.accuracy for t, s in self(state, tasks).items()}


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


@dataclass
class VectorScores:
    """Per-task metrics of one coefficient vector, in task order."""
    accuracy: list[float]
    loss: list[float]


class CoefficientEvaluator:
    """theta(c) = theta0 + sum_k c_k tau_k, merged on the device, and its per-task scores. theta0, the
    task vectors and the images stay on the device, so a point costs one weighted sum and the
    forwards, never a rebuild or a re-read."""

    def __init__(self, pool: ModelPool, data: dict[str, TaskData], device: torch.device, batch_size: int = 256):
        self.tasks, self.device = pool.tasks, device
        self.timer = StageTimer(device)
        self.evaluator = Evaluator(pool.architecture, pool.heads, {t: data[t] for t in pool.tasks}, device,
                                   batch_size, self.timer)
        self.theta0 = {k: v.to(device) for k, v in pool.pretrained.items()}
        self.vectors = {k: torch.stack([pool.task_vectors[t][k] for t in pool.tasks]).to(device) for k in pool.keys}

    def merged(self, c: np.ndarray) -> dict[str, torch.Tensor]:
        lam = torch.as_tensor(np.asarray(c, dtype=np.float32), device=self.device)
        return self.theta0 | {k: task_arithmetic(self.theta0[k], lam, tau) for k, tau in self.vectors.items()}

    def __call__(self, c: np.ndarray, tasks: Optional[Sequence[str]] = None) -> VectorScores:
        """The metrics of theta(c) on `tasks` (default: every task), in that order."""
        with self.timer.stage("merge"):
            state = self.merged(c)
        scores = self.evaluator(state, tasks)
        self.timer.count("points")
        return VectorScores([s.accuracy for s in scores.values()], [s.loss for s in scores.values()])
