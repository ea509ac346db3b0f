"""MNIST-format IDX files (gzip or raw): parser and `idx:DIR` loader."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from trainer.data.errors import DatasetError
from trainer.data.raw import RawSplit

# IDX type codes (third magic byte); multi-byte values are big-endian.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
# File-name prefixes per split; MNIST calls its test split "t10k".
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
CLASSES_FILE = "classes.txt"


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file into a native-endian array of its declared shape."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise DatasetError(f"{path}: unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX file (header cut short)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "truncated IDX file" if found < expected else "IDX file has trailing bytes"
        raise DatasetError(f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {found}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        # Sniff gzip by content, not by name: renamed files are common.
        return gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: cannot read IDX file: {error}") from error


def find_idx_file(root: Path, split: str, kind: str) -> Path:
    """The file holding `kind` ("images" or "labels") of `split`, e.g. train-images-idx3-ubyte.gz."""
    rank = 3 if kind == "images" else 1
    candidates = [
        root / f"{prefix}-{kind}{dot}idx{rank}-ubyte{gz}"
        for prefix in _SPLIT_PREFIXES[split]
        for dot in ("-", ".")
        for gz in (".gz", "")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    examples = f"{candidates[0].name} or {candidates[1].name}"
    raise DatasetError(f"{root}: no {split} {kind} IDX file (expected e.g. {examples})")


def idx_classes(root: Path) -> list[str]:
    """Names from classes.txt beside the files, else "0".."N-1" with N = 1 + the largest label seen."""
    names_file = root / CLASSES_FILE
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{names_file}: no class names")
        return names
    labels = [_read_labels(find_idx_file(root, split, "labels")) for split in ("train", "test")]
    largest = max(int(split_labels.max(initial=0)) for split_labels in labels)
    return [str(label) for label in range(largest + 1)]


def load_idx_split(root: Path, split: str, classes: list[str] | None = None) -> RawSplit:
    """One split of an IDX dataset; `classes` overrides the names found beside the files."""
    if not root.is_dir():
        raise DatasetError(f"IDX dataset directory {root} does not exist")
    classes = classes if classes is not None else idx_classes(root)
    images_path, labels_path = find_idx_file(root, split, "images"), find_idx_file(root, split, "labels")
    images, labels = _read_images(images_path), _read_labels(labels_path)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(f"{labels_path}: labels must lie in 0..{len(classes) - 1} ({len(classes)} classes)")
    return RawSplit(images, labels, classes)


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: images must be unsigned bytes, found {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 and not (images.ndim == 4 and images.shape[-1] == 3):
        raise DatasetError(f"{path}: images must have shape [N, H, W] or [N, H, W, 3], found {images.shape}")
    return images


def _read_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)
