"""Deterministic random subsets for `limit`."""
from __future__ import annotations

import numpy as np

from trainer.data.errors import DatasetError


def subset_indices(count: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of `limit` items drawn with `seed`; None when everything is kept.

    Sorting keeps the dataset's own order, so a subset reads like the original, only thinner.
    """
    if limit is None:
        return None
    if limit <= 0:
        raise DatasetError(f"limit must be positive, got {limit}")
    if limit >= count:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=limit, replace=False))
