"""Shared plumbing of the procedurally generated builtins: fixed seeds, split sizes, balanced labels."""
from __future__ import annotations

import numpy as np

IMAGE_SIZE = 28
SPLIT_SIZES = {"train": 3000, "test": 600}
# One fixed seed per split: the same images on every call and every machine, and no train/test overlap.
_SPLIT_SEEDS = {"train": 20240601, "test": 20240602}


def split_rng(generator: str, split: str) -> np.random.Generator:
    """A generator-specific stream, so changing one builtin never changes another's images."""
    return np.random.default_rng([_SPLIT_SEEDS[split], sum(generator.encode())])


def balanced_labels(rng: np.random.Generator, count: int, num_classes: int) -> np.ndarray:
    """Equal class counts (up to one), in random order."""
    return rng.permutation(np.arange(count) % num_classes).astype(np.int64)


def add_noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """float images in 0..255 plus Gaussian pixel noise -> uint8."""
    noisy = images + rng.normal(0.0, sigma, size=images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
