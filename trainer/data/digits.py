"""`builtin:digits`: scikit-learn's bundled 8x8 handwritten digits (offline, 1797 images)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from trainer.data.raw import RawSplit, read_only

DIGIT_CLASSES = [str(d) for d in range(10)]
_SPLIT_SEED = 0
_TEST_FRACTION = 0.25
_MAX_VALUE = 16.0  # load_digits pixel range is 0..16


def load_digits_split(split: str) -> RawSplit:
    images, labels = _digits_splits()[split]
    return RawSplit(images, labels, DIGIT_CLASSES)


@lru_cache(maxsize=1)
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits  # sklearn is slow to import; only pay when used
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / _MAX_VALUE)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=labels
    )
    return {
        "train": (read_only(train_x), read_only(train_y)),
        "test": (read_only(test_x), read_only(test_y)),
    }
