"""Image folders: `DIR/{train,test}/<class>/*.{png,jpg,jpeg}`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models_store.preprocess import Preprocess
from trainer.data.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class FolderListing:
    paths: list[Path]
    labels: np.ndarray  # int64 [N]
    classes: list[str]


def folder_classes(root: Path) -> list[str]:
    """Sorted class-folder names; both splits must have the same ones so labels mean the same thing."""
    train, test = _class_names(root, "train"), _class_names(root, "test")
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise DatasetError(
            f"{root}: train and test class folders differ (only in train: {only_train}, only in test: {only_test})"
        )
    if not train:
        raise DatasetError(f"{root}: no class folders under {root / 'train'}")
    return train


def list_folder_split(root: Path, split: str) -> FolderListing:
    classes = folder_classes(root)
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = root / split / name
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class {name!r} has no images in {class_dir} (expected *.png, *.jpg or *.jpeg)")
        paths += files
        labels += [label] * len(files)
    return FolderListing(paths, np.asarray(labels, dtype=np.int64), classes)


def decode_images(paths: list[Path], preprocess: Preprocess) -> torch.Tensor:
    """Decode and preprocess each file exactly as the service would see it ([N, C, S, S])."""
    size = preprocess.image_size
    out = torch.empty((len(paths), preprocess.channels, size, size), dtype=torch.float32)
    for i, path in enumerate(paths):
        out[i] = preprocess.pil_to_tensor(_open_image(path))
    return out


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a broken file fails here with its name
            return image.copy()
    except Exception as error:  # PIL raises many types for corrupt files; all mean "broken file"
        raise DatasetError(f"cannot decode image {path}: {error}") from error


def _class_names(root: Path, split: str) -> list[str]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetError(f"image folder dataset {root}: missing split folder {split_dir}")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
