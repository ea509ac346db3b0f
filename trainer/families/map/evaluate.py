"""MAP's real evaluations: theta0 + sum_k c_k tau_k, evaluated on every task's labelled validation
data (accuracy and mean cross-entropy) by the one evaluator (trainer/evaluate.py). theta0, the task
vectors and the images stay on the device, so a point costs one weighted sum and the forwards,
never a rebuild or a re-read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from models_store.kinds.point_set import task_arithmetic

from ...data import TaskData
from ...evaluate import Evaluator, StageTimer
from ...pool import ModelPool


@dataclass
class Scores:
    accuracy: list[float]  # per task, in task order
    loss: list[float]


def by_stage(timer: StageTimer) -> dict[str, float]:
    """A MAP run's seconds by stage, every stage named (zero when it did not run)."""
    return {name: round(timer.seconds.get(name, 0.0), 3) for name in ("merge", "evaluate", "fit", "nsga3")}


class CoefficientEvaluator:
    """theta(c) = theta0 + sum_k c_k tau_k, merged on the device, and its per-task scores."""

    def __init__(self, pool: ModelPool, val: dict[str, TaskData], device: torch.device, batch_size: int = 256):
        self.tasks, self.device = pool.tasks, device
        self.timer = StageTimer(device)
        self.evaluator = Evaluator(pool.architecture, pool.heads, {t: val[t] for t in pool.tasks}, device, batch_size,
                                   self.timer)
        self.theta0 = {k: v.to(device) for k, v in pool.pretrained.items()}
        self.vectors = {k: torch.stack([pool.task_vectors[t][k] for t in pool.tasks]).to(device) for k in pool.keys}

    def merged(self, c: np.ndarray) -> dict[str, torch.Tensor]:
        lam = torch.as_tensor(np.asarray(c, dtype=np.float32), device=self.device)
        return self.theta0 | {k: task_arithmetic(self.theta0[k], lam, tau) for k, tau in self.vectors.items()}

    def __call__(self, c: np.ndarray, tasks: Optional[Sequence[str]] = None) -> Scores:
        """The metrics of theta(c) on `tasks` (default: every task), in that order."""
        with self.timer.stage("merge"):
            state = self.merged(c)
        scores = self.evaluator(state, tasks)
        self.timer.count("points")
        return Scores([s.accuracy for s in scores.values()], [s.loss for s in scores.values()])
