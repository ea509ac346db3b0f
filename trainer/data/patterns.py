"""`builtin:patterns`: procedural textures (stripes of four orientations, checks, dots, rings, ...).

The fourth demo task when Debian's fashion-mnist is absent. Frequency, phase, contrast, colours and a
small rotation are random per image, so only the pattern's structure identifies the class.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from trainer.data.procedural import IMAGE_SIZE, SPLIT_SIZES, add_noise, balanced_labels, split_rng
from trainer.data.raw import RawSplit, read_only

PATTERN_CLASSES = ["horizontal", "vertical", "diagonal", "antidiagonal", "checks",
                   "dots", "rings", "grid", "zigzag", "blobs"]  # fmt: skip

_AXIS = (np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1) / 2) / IMAGE_SIZE  # [-0.5, 0.5]


def load_patterns_split(split: str) -> RawSplit:
    images, labels = _generate(split)
    return RawSplit(images, labels, PATTERN_CLASSES)


@lru_cache(maxsize=2)
def _generate(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = split_rng("patterns", split)
    labels = balanced_labels(rng, SPLIT_SIZES[split], len(PATTERN_CLASSES))
    clean = np.stack([_colourise(_texture(PATTERN_CLASSES[label], rng), rng) for label in labels])
    return read_only(add_noise(clean, rng, sigma=14.0)), read_only(labels)


def _texture(name: str, rng: np.random.Generator) -> np.ndarray:
    """A [S, S] field in [0, 1]."""
    jitter = rng.uniform(-0.2, 0.2)  # radians: orientation classes stay apart (45 degrees between them)
    orientation = {"horizontal": np.pi / 2, "vertical": 0.0, "diagonal": np.pi / 4, "antidiagonal": -np.pi / 4}
    x, y = _coordinates(jitter, rng)
    freq = rng.uniform(3.0, 6.0)  # cycles per image
    phase = rng.uniform(0, 2 * np.pi)
    if name in orientation:
        theta = orientation[name] + jitter
        field = np.cos(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
        return _square(field)
    if name == "checks":
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * x + phase) * np.sin(2 * np.pi * freq * y + phase))
    if name == "dots":
        cell = np.cos(2 * np.pi * freq * x + phase) + np.cos(2 * np.pi * freq * y + phase)
        return (cell > rng.uniform(0.9, 1.3)).astype(np.float64)
    if name == "rings":
        cx, cy = rng.uniform(-0.3, 0.3, size=2)
        return _square(np.cos(2 * np.pi * freq * np.hypot(x - cx, y - cy) + phase))
    if name == "grid":
        width = rng.uniform(0.25, 0.4)  # |sin| below this: a line of about a fifth of the period
        lines = (np.abs(np.sin(np.pi * freq * x + phase)) < width) | (np.abs(np.sin(np.pi * freq * y + phase)) < width)
        return lines.astype(np.float64)
    if name == "zigzag":
        amplitude = rng.uniform(0.06, 0.12)
        tri = np.abs(((x * freq * 0.8 + phase) % 1.0) - 0.5) * 2 - 0.5  # triangle wave in x
        return _square(np.cos(2 * np.pi * freq * (y + amplitude * tri * 2)))
    if name == "blobs":
        field = np.zeros_like(x)
        for _ in range(rng.integers(3, 7)):
            c = rng.uniform(-0.5, 0.5, size=2)
            field += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * rng.uniform(0.06, 0.14) ** 2))
        return np.clip(field, 0, 1)
    raise ValueError(name)


def _coordinates(angle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by `angle` and shifted at random."""
    y, x = np.meshgrid(_AXIS, _AXIS, indexing="ij")
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = rng.uniform(-0.5, 0.5, size=2)
    return cos * x - sin * y + dx, sin * x + cos * y + dy


def _square(wave: np.ndarray) -> np.ndarray:
    """Soft-thresholded wave: sharp stripes, but antialiased."""
    return 1.0 / (1.0 + np.exp(-6.0 * wave))


def _colourise(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mix a dark and a bright random colour: [S, S, 3] floats in 0..255."""
    dark = rng.uniform(0, 100, size=3)
    bright = rng.uniform(140, 255, size=3)
    if rng.random() < 0.5:  # either may be the foreground: brightness is not a class cue
        dark, bright = bright, dark
    return dark + field[..., None] * (bright - dark)
