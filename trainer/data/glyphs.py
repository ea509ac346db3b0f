"""Characters rendered from matplotlib's TTF fonts, with random affine and noise: `builtin:glyphs`
(capitals A-J) and four more sets of ten classes (GLYPH_SETS), so a zoo of many tasks can be
built offline."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trainer.data.errors import DatasetError
from trainer.data.procedural import IMAGE_SIZE, SPLIT_SIZES, add_noise, balanced_labels, split_rng
from trainer.data.raw import RawSplit, read_only

GLYPH_CLASSES = list("ABCDEFGHIJ")
# builtin name -> its characters, each one class; a set's images are drawn from its name's seed
GLYPH_SETS = {"glyphs": GLYPH_CLASSES, "capitals-kt": list("KLMNOPQRST"), "lowercase": list("abcdefghij"),
              "lowercase-kt": list("klmnopqrst"), "numerals": list("0123456789")}
# Text families with ordinary Latin capitals; "Display" fonts are stubs without letters.
_FONT_PATTERNS = ("DejaVu*.ttf", "STIXGeneral*.ttf")
_CANVAS = 64  # render large, transform, then downsample: antialiased edges at 28x28
_LETTER_HEIGHT = 40  # every font's letters are scaled to this ink height before the random scale


def glyph_fonts() -> list[Path]:
    import matplotlib  # only for its data path; no backend is loaded

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(
        path for pattern in _FONT_PATTERNS for path in font_dir.glob(pattern) if "Display" not in path.name
    )
    if not fonts:
        raise DatasetError(f"builtin:glyphs found no TTF fonts in {font_dir}")
    return fonts


def load_glyphs_split(split: str, name: str = "glyphs") -> RawSplit:
    images, labels = _generate(split, name)
    return RawSplit(images, labels, GLYPH_SETS[name])


@lru_cache(maxsize=4)
def _generate(split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = split_rng(name, split)
    base = _base_glyphs(name)
    count = SPLIT_SIZES[split]
    labels = balanced_labels(rng, count, len(GLYPH_SETS[name]))
    fonts = rng.integers(0, base.shape[0], size=count)
    clean = np.stack([_distort(base[f, label], rng) for f, label in zip(fonts, labels)])
    # Random contrast and background level, then pixel noise: intensity is not a class cue.
    contrast = rng.uniform(0.55, 1.0, size=(count, 1, 1))
    background = rng.uniform(0.0, 40.0, size=(count, 1, 1))
    images = add_noise(clean * contrast + background, rng, sigma=14.0)
    return read_only(images), read_only(labels)


@lru_cache(maxsize=len(GLYPH_SETS))
def _base_glyphs(name: str) -> np.ndarray:
    """uint8 [fonts, characters, CANVAS, CANVAS]: each character centred, scaled to a common height."""
    return np.stack([np.stack([_render_letter(font, c) for c in GLYPH_SETS[name]]) for font in glyph_fonts()])


def _render_letter(font_path: Path, letter: str) -> np.ndarray:
    font = ImageFont.truetype(str(font_path), size=2 * _LETTER_HEIGHT)
    scratch = Image.new("L", (4 * _LETTER_HEIGHT, 4 * _LETTER_HEIGHT), 0)
    ImageDraw.Draw(scratch).text((_LETTER_HEIGHT, _LETTER_HEIGHT), letter, fill=255, font=font)
    box = scratch.getbbox()
    if box is None:
        raise DatasetError(f"builtin:glyphs: font {font_path} renders {letter!r} as nothing")
    ink = scratch.crop(box)
    scale = _LETTER_HEIGHT / ink.height
    width = min(_CANVAS - 8, max(1, round(ink.width * scale)))
    ink = ink.resize((width, _LETTER_HEIGHT), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    canvas.paste(ink, ((_CANVAS - width) // 2, (_CANVAS - _LETTER_HEIGHT) // 2))
    return np.asarray(canvas)


def _distort(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation, scale, shear and shift about the centre, then downsample to IMAGE_SIZE (float)."""
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.75, 1.1)
    shear = rng.uniform(-0.25, 0.25)
    shift = rng.uniform(-0.08, 0.08, size=2) * _CANVAS
    forward = _affine(angle, scale, shear, shift)
    inverse = np.linalg.inv(forward)  # PIL maps output pixels back to input pixels
    image = Image.fromarray(glyph).transform(
        (_CANVAS, _CANVAS), Image.Transform.AFFINE, tuple(inverse[:2].ravel()), Image.Resampling.BILINEAR
    )
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.float32)


def _affine(angle: float, scale: float, shear: float, shift: np.ndarray) -> np.ndarray:
    centre = _CANVAS / 2
    to_origin = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]])
    cos, sin = math.cos(angle), math.sin(angle)
    linear = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]) @ np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
    back = np.array([[1, 0, centre + shift[0]], [0, 1, centre + shift[1]], [0, 0, 1]])
    return back @ (linear * np.array([[scale], [scale], [1]])) @ to_origin
