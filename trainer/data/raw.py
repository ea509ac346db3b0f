"""Raw (undecoded-to-float) split: uint8 pixels plus labels, the common currency of array loaders."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawSplit:
    images: np.ndarray  # uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB)
    labels: np.ndarray  # int64 [N]
    classes: list[str]

    def take(self, indices: np.ndarray) -> RawSplit:
        return RawSplit(self.images[indices], self.labels[indices], self.classes)


def read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared between callers, so nobody may write into them."""
    array.setflags(write=False)
    return array
