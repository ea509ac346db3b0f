"""Dataset layer: every spec kind, determinism, limits, and errors that name what is broken."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainer.data.fashion as fashion
from models_store.preprocess import Preprocess
from trainer.data import BUILTINS, DatasetError, TaskData, dataset_classes, load_dataset
from trainer.data.convert import images_to_tensor

CLIP = Preprocess(image_size=32)  # CLIP mean/std, 3 channels, upsampled from 28x28 / 8x8
GRAY = Preprocess(image_size=16, channels=1, mean=(0.5,), std=(0.5,))
IDENTITY = Preprocess(image_size=8, channels=1, mean=(0.0,), std=(1.0,))  # output = pixels / 255
PROCEDURAL = ("digits", "glyphs", "shapes", "patterns", "numerals")


# ---------------------------------------------------------------- helpers that write datasets


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, raw bytes."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_dataset(root: Path, gz: bool, train: int = 30, test: int = 12, classes: int = 3) -> dict[str, np.ndarray]:
    """A tiny MNIST-layout dataset of 8x8 images; returns the arrays written."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images = rng.integers(0, 256, size=(count, 8, 8), dtype=np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_folder_dataset(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> None:
    """PNG and JPEG files of assorted sizes and modes under root/{train,test}/<class>/."""
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            class_dir = root / split / name
            class_dir.mkdir(parents=True)
            for i in range(per_class):
                size = (10 + 3 * i, 12 + c)
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i == 1:
                    image.convert("L").save(class_dir / f"{i}.png")
                elif i == 2:
                    image.save(class_dir / f"{i}.JPG")
                else:
                    image.convert("RGBA").save(class_dir / f"{i}.png")


def unnormalize(data: TaskData, preprocess: Preprocess) -> torch.Tensor:
    channels = data.images.shape[1]
    mean = torch.tensor(preprocess.mean[:channels]).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std[:channels]).view(1, -1, 1, 1)
    return data.images * std + mean


# ---------------------------------------------------------------- builtins


@pytest.mark.parametrize("name, classes, train, test", [
    ("digits", [str(d) for d in range(10)], 1347, 450),
    ("glyphs", list("ABCDEFGHIJ"), 3000, 600),
    ("capitals-kt", list("KLMNOPQRST"), 3000, 600),
    ("lowercase", list("abcdefghij"), 3000, 600),
    ("lowercase-kt", list("klmnopqrst"), 3000, 600),
    ("numerals", list("0123456789"), 3000, 600),
    ("shapes", ["circle", "ring", "square", "triangle", "cross", "star", "crescent", "arrow"], 3000, 600),
    ("patterns", ["horizontal", "vertical", "diagonal", "antidiagonal", "checks", "dots", "rings", "grid", "zigzag",
                  "blobs"], 3000, 600),
])  # fmt: skip
def test_builtin_shapes_dtypes_and_normalisation(name: str, classes: list[str], train: int, test: int) -> None:
    assert dataset_classes(f"builtin:{name}") == classes
    for split, count in (("train", train), ("test", test)):
        data = load_dataset(f"builtin:{name}", split, CLIP)
        assert data.images.shape == (count, 3, 32, 32) and data.images.dtype == torch.float32
        assert data.labels.shape == (count,) and data.labels.dtype == torch.int64
        assert data.classes == classes
        assert set(data.labels.tolist()) == set(range(len(classes)))  # every class present
        pixels = unnormalize(data, CLIP)
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
        assert pixels.std() > 0.05  # not blank


@pytest.mark.parametrize("name", PROCEDURAL)
def test_builtin_is_deterministic_and_not_mutable_through_results(name: str) -> None:
    first = load_dataset(f"builtin:{name}", "test", GRAY)
    first.images.zero_()  # a caller scribbling on its tensor must not reach the cache
    second, third = load_dataset(f"builtin:{name}", "test", GRAY), load_dataset(f"builtin:{name}", "test", GRAY)
    assert torch.equal(second.images, third.images) and torch.equal(second.labels, third.labels)
    assert second.images.abs().sum() > 0
    assert second.images.shape[1] == 1 and second.images.min() >= -1 and second.images.max() <= 1


def test_builtin_train_and_test_differ() -> None:
    train, test = load_dataset("builtin:shapes", "train", GRAY), load_dataset("builtin:shapes", "test", GRAY)
    assert not torch.equal(train.images[: len(test)], test.images)


def test_grayscale_builtin_is_repeated_to_rgb() -> None:
    pixels = unnormalize(load_dataset("builtin:glyphs", "test", CLIP, limit=20), CLIP)
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
    assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)


def test_rgb_to_gray_matches_pil() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    batch = images_to_tensor(rgb, IDENTITY)
    pil = torch.stack([IDENTITY.pil_to_tensor(Image.fromarray(image)) for image in rgb])
    assert batch.shape == (4, 1, 8, 8)
    assert torch.allclose(batch, pil, atol=1.5 / 255)


def _spectrum(images: torch.Tensor) -> np.ndarray:
    """Translation-invariant features (|FFT|), for shapes whose position is random."""
    return torch.fft.rfft2(images[:, 0]).abs().log1p().flatten(1).numpy()


def _pixels(images: torch.Tensor) -> np.ndarray:
    return images.flatten(1).numpy()


@pytest.mark.parametrize("name, features", [("digits", _pixels), ("glyphs", _pixels), ("shapes", _spectrum),
                                             ("patterns", _spectrum), ("capitals-kt", _pixels), ("lowercase", _pixels),
                                             ("lowercase-kt", _pixels), ("numerals", _pixels)])
def test_builtin_is_learnable(name: str, features) -> None:
    """A linear classifier far above chance guards against generators that lost the class signal."""
    from sklearn.linear_model import RidgeClassifier

    train, test = load_dataset(f"builtin:{name}", "train", GRAY), load_dataset(f"builtin:{name}", "test", GRAY)
    model = RidgeClassifier(alpha=1.0).fit(features(train.images), train.labels.numpy())
    accuracy = model.score(features(test.images), test.labels.numpy())
    chance = 1 / len(train.classes)
    assert accuracy > max(0.5, 4 * chance), f"{name}: linear test accuracy {accuracy:.2f}"


def test_every_builtin_is_covered() -> None:
    assert set(BUILTINS) == {"digits", "fashion", "glyphs", "patterns", "shapes", "capitals-kt", "lowercase",
                             "lowercase-kt", "numerals"}


# ---------------------------------------------------------------- fashion (Debian package)


def test_fashion_absent_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fashion, "FASHION_DIR", tmp_path / "missing")
    for call in (lambda: load_dataset("builtin:fashion", "train", GRAY), lambda: dataset_classes("builtin:fashion")):
        with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
            call()


def test_fashion_present_reads_idx_with_class_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = write_idx_dataset(tmp_path, gz=True, train=20, test=10, classes=10)
    monkeypatch.setattr(fashion, "FASHION_DIR", tmp_path)
    names = dataset_classes("builtin:fashion")
    assert len(names) == 10 and names[0] == "T-shirt/top" and names[-1] == "Ankle boot"
    data = load_dataset("builtin:fashion", "test", IDENTITY)
    assert data.classes == names and data.images.shape == (10, 1, 8, 8)
    assert torch.equal(data.labels, torch.from_numpy(arrays["test_labels"].astype(np.int64)))


# ---------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_dataset(tmp_path, gz=gz)
    assert dataset_classes(f"idx:{tmp_path}") == ["0", "1", "2"]
    for split in ("train", "test"):
        data = load_dataset(f"idx:{tmp_path}", split, IDENTITY)
        expected = torch.from_numpy(arrays[f"{split}_images"]).float().unsqueeze(1) / 255
        assert torch.allclose(data.images, expected, atol=1e-6)
        assert torch.equal(data.labels, torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)))


def test_idx_batch_path_matches_service_preprocessing(tmp_path: Path) -> None:
    """At native size the fast batch path must agree with Preprocess.pil_to_tensor (what the service does)."""
    arrays = write_idx_dataset(tmp_path, gz=False)
    preprocess = Preprocess(image_size=8)  # CLIP normalisation, gray repeated to RGB
    data = load_dataset(f"idx:{tmp_path}", "test", preprocess)
    pil = torch.stack([preprocess.pil_to_tensor(Image.fromarray(image)) for image in arrays["test_images"]])
    assert torch.allclose(data.images, pil, atol=1e-5)


def test_idx_resizes_and_reads_classes_file(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=True)
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\n")
    data = load_dataset(f"idx:{tmp_path}", "train", CLIP)
    assert data.classes == ["zero", "one", "two"] and data.images.shape == (30, 3, 32, 32)


def test_idx_truncated_file_names_it(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset(f"idx:{tmp_path}", "train", IDENTITY)


def test_idx_truncated_gzip_names_it(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=True)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset(f"idx:{tmp_path}", "test", IDENTITY)


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match="30 images.*train-labels-idx1-ubyte holds 29 labels"):
        load_dataset(f"idx:{tmp_path}", "train", IDENTITY)


def test_idx_bad_magic_and_missing_files(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.*magic"):
        load_dataset(f"idx:{tmp_path}", "test", IDENTITY)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="no test labels IDX file"):
        load_dataset(f"idx:{tmp_path}", "test", IDENTITY)


def test_idx_labels_outside_classes_file(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=False)
    (tmp_path / "classes.txt").write_text("zero\none\n")  # labels go up to 2
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.*0..1"):
        load_dataset(f"idx:{tmp_path}", "train", IDENTITY)


# ---------------------------------------------------------------- folder


def test_folder_round_trip(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path)
    assert dataset_classes(f"folder:{tmp_path}") == ["cat", "dog"]
    data = load_dataset(f"folder:{tmp_path}", "train", CLIP)
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.classes == ["cat", "dog"]
    # Each file is preprocessed exactly as the service would preprocess it.
    expected = CLIP.pil_to_tensor(Image.open(tmp_path / "train" / "dog" / "1.png"))
    assert torch.allclose(data.images[4], expected)
    gray = load_dataset(f"folder:{tmp_path}", "test", GRAY)
    assert gray.images.shape == (6, 1, 16, 16)


def test_folder_limit_is_deterministic(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path, per_class=3)
    first = load_dataset(f"folder:{tmp_path}", "train", GRAY, limit=4, seed=1)
    second = load_dataset(f"folder:{tmp_path}", "train", GRAY, limit=4, seed=1)
    assert len(first) == 4 and torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_folder_broken_image_names_the_file(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path)
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(f"folder:{tmp_path}", "test", GRAY)


def test_folder_truncated_image_names_the_file(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path)
    path = tmp_path / "train" / "cat" / "0.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match="0.png"):
        load_dataset(f"folder:{tmp_path}", "train", GRAY)


def test_folder_empty_class_names_the_class(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path)
    for split in ("train", "test"):
        (tmp_path / split / "emu").mkdir()
        (tmp_path / split / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="'emu'"):
        load_dataset(f"folder:{tmp_path}", "train", GRAY)


def test_folder_missing_split_and_mismatched_classes(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path)
    (tmp_path / "test" / "owl").mkdir()
    with pytest.raises(DatasetError, match="only in test: \\['owl'\\]"):
        dataset_classes(f"folder:{tmp_path}")
    (tmp_path / "test" / "owl").rmdir()
    (tmp_path / "test").rename(tmp_path / "val")
    with pytest.raises(DatasetError, match="missing split folder.*test"):
        load_dataset(f"folder:{tmp_path}", "train", GRAY)


# ---------------------------------------------------------------- limit and spec errors


def test_limit_is_a_deterministic_subset() -> None:
    full = load_dataset("builtin:digits", "train", GRAY)
    first = load_dataset("builtin:digits", "train", GRAY, limit=100, seed=5)
    again = load_dataset("builtin:digits", "train", GRAY, limit=100, seed=5)
    other = load_dataset("builtin:digits", "train", GRAY, limit=100, seed=6)
    assert len(first) == 100 and torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels) or not torch.equal(first.images, other.images)
    # The subset is made of real rows of the full split.
    rows = {tuple(row.tolist()) for row in full.images.flatten(1)}
    assert all(tuple(row.tolist()) in rows for row in first.images.flatten(1))
    assert len(load_dataset("builtin:digits", "test", GRAY, limit=10_000)) == 450
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("builtin:digits", "test", GRAY, limit=0)


@pytest.mark.parametrize("spec, message", [
    ("builtin:nope", "builtin:nope"),
    ("zip:/tmp/x", "unknown kind 'zip'"),
    ("digits", "KIND:TARGET"),
    ("idx:", "KIND:TARGET"),
    ("idx:/nonexistent/dir", "/nonexistent/dir"),
    ("folder:/nonexistent/dir", "/nonexistent/dir"),
])  # fmt: skip
def test_bad_specs_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec, "train", GRAY)
    with pytest.raises(DatasetError, match=message):
        dataset_classes(spec)


def test_unknown_split() -> None:
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("builtin:digits", "val", GRAY)


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)
