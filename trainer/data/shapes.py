"""`builtin:shapes`: procedurally drawn geometric shapes with random size, position, rotation and colour."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from trainer.data.procedural import IMAGE_SIZE, SPLIT_SIZES, add_noise, balanced_labels, split_rng
from trainer.data.raw import RawSplit, read_only

SHAPE_CLASSES = ["circle", "ring", "square", "triangle", "cross", "star", "crescent", "arrow"]
_CANVAS = 2 * IMAGE_SIZE  # draw at 2x, downsample: antialiased edges

Point = tuple[float, float]

# Outlines in unit coordinates (radius ~1, centred on the origin); rotated and scaled per image.
_CROSS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
          (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]  # fmt: skip
_ARROW = [(-1, -0.22), (0.15, -0.22), (0.15, -0.65), (1, 0), (0.15, 0.65), (0.15, 0.22), (-1, 0.22)]


def _regular(corners: int, radius: float = 1.0, phase: float = 0.0) -> list[Point]:
    return [(radius * math.cos(phase + 2 * math.pi * k / corners), radius * math.sin(phase + 2 * math.pi * k / corners))
            for k in range(corners)]  # fmt: skip


def _star() -> list[Point]:
    outer, inner = _regular(5, 1.0, -math.pi / 2), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]


_POLYGONS: dict[str, list[Point]] = {
    "square": _regular(4, 1.0, math.pi / 4),
    "triangle": _regular(3, 1.0, -math.pi / 2),
    "cross": _CROSS,
    "star": _star(),
    "arrow": _ARROW,
}


def load_shapes_split(split: str) -> RawSplit:
    images, labels = _generate(split)
    return RawSplit(images, labels, SHAPE_CLASSES)


@lru_cache(maxsize=2)
def _generate(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = split_rng("shapes", split)
    labels = balanced_labels(rng, SPLIT_SIZES[split], len(SHAPE_CLASSES))
    clean = np.stack([_draw(SHAPE_CLASSES[label], rng) for label in labels])
    return read_only(add_noise(clean, rng, sigma=12.0)), read_only(labels)


def _draw(shape: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB image (float [S, S, 3]): a bright shape on a darker background of random colour."""
    radius = rng.uniform(0.22, 0.42) * _CANVAS
    margin = radius * 0.9  # shapes may touch the border but stay mostly inside
    centre = rng.uniform(margin, _CANVAS - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    background = tuple(int(v) for v in rng.integers(0, 90, size=3))
    foreground = tuple(int(v) for v in rng.integers(130, 256, size=3))
    image = Image.new("RGB", (_CANVAS, _CANVAS), background)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(_box(centre, radius), fill=foreground)
    elif shape == "ring":
        draw.ellipse(_box(centre, radius), outline=foreground, width=max(2, round(radius * 0.3)))
    elif shape == "crescent":
        draw.ellipse(_box(centre, radius), fill=foreground)
        bite = centre + 0.5 * radius * np.array([math.cos(angle), math.sin(angle)])
        draw.ellipse(_box(bite, 0.85 * radius), fill=background)
    else:
        draw.polygon(_place(_POLYGONS[shape], centre, radius, angle), fill=foreground)
    small = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def _box(centre: np.ndarray, radius: float) -> list[float]:
    return [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]


def _place(points: list[Point], centre: np.ndarray, radius: float, angle: float) -> list[Point]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(centre[0] + radius * (cos * x - sin * y), centre[1] + radius * (sin * x + cos * y)) for x, y in points]
