"""Deterministic random subsets for `limit`."""
from __future__ import annotations

import numpy as np

from trainer.data.errors import DatasetError


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of about `fraction` of each class (at least one image of every class), drawn
    with `seed`: a validation part held apart from a training split, the same on every machine."""
    if not 0 < fraction < 1:
        raise DatasetError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(picked))


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
