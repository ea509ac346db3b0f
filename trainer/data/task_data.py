"""What every loader hands the trainer: one preprocessed split of one dataset."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TaskData:
    images: torch.Tensor  # float32 [N, C, S, S], normalised by the Preprocess
    labels: torch.Tensor  # int64 [N]
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])
