"""Registry of `builtin:NAME` datasets: all offline and deterministic."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from trainer.data.digits import DIGIT_CLASSES, load_digits_split
from trainer.data.errors import DatasetError
from trainer.data.fashion import fashion_classes, load_fashion_split
from trainer.data.glyphs import GLYPH_SETS, load_glyphs_split
from trainer.data.patterns import PATTERN_CLASSES, load_patterns_split
from trainer.data.raw import RawSplit
from trainer.data.shapes import SHAPE_CLASSES, load_shapes_split


@dataclass(frozen=True)
class Builtin:
    classes: Callable[[], list[str]]
    load: Callable[[str], RawSplit]  # split -> raw uint8 images


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(lambda: list(DIGIT_CLASSES), load_digits_split),
    "fashion": Builtin(fashion_classes, load_fashion_split),
    "patterns": Builtin(lambda: list(PATTERN_CLASSES), load_patterns_split),
    "shapes": Builtin(lambda: list(SHAPE_CLASSES), load_shapes_split),
} | {name: Builtin(partial(list, chars), partial(load_glyphs_split, name=name)) for name, chars in GLYPH_SETS.items()}


def get_builtin(name: str) -> Builtin:
    try:
        return BUILTINS[name]
    except KeyError:
        known = ", ".join(BUILTINS)
        raise DatasetError(f"dataset spec 'builtin:{name}': unknown builtin {name!r} (known: {known})") from None
