"""`builtin:fashion`: Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX files)."""
from __future__ import annotations

from pathlib import Path

from trainer.data.errors import DatasetError
from trainer.data.idx import find_idx_file, load_idx_split
from trainer.data.raw import RawSplit

# Where the Debian package puts the files; a module constant so tests can point it elsewhere.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def fashion_classes() -> list[str]:
    _require_files()
    return list(FASHION_CLASSES)


def load_fashion_split(split: str) -> RawSplit:
    _require_files()
    return load_idx_split(FASHION_DIR, split, classes=list(FASHION_CLASSES))


def _require_files() -> None:
    """Fail early, naming the package to install, rather than with a bare missing-file error."""
    try:
        for split in ("train", "test"):
            for kind in ("images", "labels"):
                find_idx_file(FASHION_DIR, split, kind)
    except DatasetError as error:
        raise DatasetError(
            f"builtin:fashion: Fashion-MNIST IDX files not found in {FASHION_DIR}; "
            f"install them with `apt-get install {FASHION_PACKAGE}` (detail: {error})"
        ) from error
