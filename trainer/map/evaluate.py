"""MAP's real evaluations: theta0 + sum_k c_k tau_k, evaluated on every task's labelled validation
data (accuracy and mean cross-entropy). The tower is built once, theta0, the task vectors and the
images stay on the device, and the merged weights go in through torch.func.functional_call, so a
point costs one weighted sum and the forwards, never a rebuild or a re-read."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from models_store.kinds.point_set import task_arithmetic
from models_store.tower import head_logits

from ..data import TaskData
from ..objective import autocast
from ..pool import ModelPool


@dataclass
class Scores:
    accuracy: list[float]  # per task, in task order
    loss: list[float]


@dataclass
class StageSeconds:
    """Wall time by stage of a MAP run, and how many evaluations it made."""
    merge: float = 0.0
    evaluate: float = 0.0
    fit: float = 0.0
    nsga3: float = 0.0
    points: int = 0
    task_evaluations: int = 0  # a point on one task's data

    def by_stage(self) -> dict[str, float]:
        return {name: round(getattr(self, name), 3) for name in ("merge", "evaluate", "fit", "nsga3")}


class Evaluator:
    def __init__(self, pool: ModelPool, val: dict[str, TaskData], device: torch.device, batch_size: int = 256):
        self.tasks, self.device, self.batch_size = pool.tasks, device, batch_size
        self.tower = pool.tower().to(device).eval()
        self.theta0 = {k: v.to(device) for k, v in pool.pretrained.items()}
        self.vectors = {k: torch.stack([pool.task_vectors[t][k] for t in pool.tasks]).to(device) for k in pool.keys}
        self.heads = {t: h.to(device) for t, h in pool.heads.items()}
        self.val = {t: (val[t].images.to(device), val[t].labels.to(device)) for t in pool.tasks}
        self.seconds = StageSeconds()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def merged(self, c: np.ndarray) -> dict[str, torch.Tensor]:
        lam = torch.as_tensor(np.asarray(c, dtype=np.float32), device=self.device)
        return self.theta0 | {k: task_arithmetic(self.theta0[k], lam, tau) for k, tau in self.vectors.items()}

    @torch.inference_mode()
    def __call__(self, c: np.ndarray, tasks: Optional[Sequence[str]] = None) -> Scores:
        """The metrics of theta(c) on `tasks` (default: every task), in that order."""
        start = time.perf_counter()
        state = self.merged(c)
        self._sync()
        merged = time.perf_counter()
        accuracy, loss = [], []
        for t in tasks or self.tasks:
            images, labels = self.val[t]
            head, correct, total_loss = self.heads[t], 0, 0.0
            for i in range(0, len(labels), self.batch_size):
                with autocast(self.device):
                    feats = functional_call(self.tower, state, (images[i:i + self.batch_size],))
                logits = head_logits(feats.float(), head.weight, head.bias)
                y = labels[i:i + self.batch_size]
                correct += int((logits.argmax(-1) == y).sum())
                total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            accuracy.append(correct / len(labels))
            loss.append(total_loss / len(labels))
        self._sync()
        self.seconds.merge += merged - start
        self.seconds.evaluate += time.perf_counter() - merged
        self.seconds.points += 1
        self.seconds.task_evaluations += len(tasks or self.tasks)
        return Scores(accuracy, loss)
