"""Entry points: spec string -> class names, spec string + split -> preprocessed TaskData."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pathlib import Path

import numpy as np
import torch

from models_store.preprocess import Preprocess
from trainer.data.builtin import get_builtin
from trainer.data.convert import images_to_tensor
from trainer.data.errors import DatasetError
from trainer.data.folder import decode_images, folder_classes, list_folder_split
from trainer.data.idx import idx_classes, load_idx_split
from trainer.data.raw import RawSplit
from trainer.data.spec import DatasetSpec, check_split, parse_spec
from trainer.data.subset import stratified_indices, subset_indices
from trainer.data.task_data import TaskData


def dataset_classes(spec: str) -> list[str]:
    parsed = parse_spec(spec)
    if parsed.kind == "idx":
        return idx_classes(_existing_dir(parsed))
    if parsed.kind == "folder":
        return folder_classes(_existing_dir(parsed))
    return get_builtin(parsed.target).classes()


def load_dataset(spec: str, split: str, preprocess: Preprocess, limit: int | None = None, seed: int = 0,
                 holdout: float = 0.0) -> TaskData:
    """One split, preprocessed; `holdout` and `limit` keep the images `TrainingPart` names."""
    parsed = parse_spec(spec)
    check_split(split)
    part = TrainingPart(limit, seed, holdout)
    if parsed.kind == "folder":
        return _load_folder(parsed, split, preprocess, part)
    raw = load_raw(parsed, split)
    indices = part.indices(np.asarray(raw.labels))
    if indices is not None:
        raw = raw.take(indices)
    return TaskData(images_to_tensor(raw.images, preprocess), _labels_tensor(raw.labels), list(raw.classes))


@dataclass(frozen=True)
class TrainingPart:
    """The images of a split that a zoo's towers train on: first a class-stratified `holdout`
    fraction (drawn with `seed`) is set apart and never read, then `limit` of the rest are drawn
    with `seed` (None: all of them). The same on every machine, so a learner can tell which train
    images no tower has seen."""
    limit: Optional[int] = None
    seed: int = 0
    holdout: float = 0.0

    def indices(self, labels: np.ndarray) -> Optional[np.ndarray]:
        """Sorted indices of the part; None when it is the whole split."""
        if not self.holdout:
            return subset_indices(len(labels), self.limit, self.seed)
        if not 0 < self.holdout < 1:
            raise DatasetError(f"the held-out fraction must be in [0, 1), got {self.holdout}")
        rest = np.setdiff1d(np.arange(len(labels)), stratified_indices(labels, self.holdout, self.seed))
        bare = np.setdiff1d(np.unique(labels), labels[rest])
        if len(bare):  # every class keeps one image out, so a class of one would train on none
            raise DatasetError(f"--holdout {self.holdout} leaves class index {int(bare[0])} without a training "
                               f"image (it has {int((labels == bare[0]).sum())}): give more images or --holdout 0")
        picked = subset_indices(len(rest), self.limit, self.seed)
        return rest if picked is None else rest[picked]


def load_validation(spec: str, preprocess: Preprocess, fraction: float, seed: int = 0,
                    finetuning: Optional[TrainingPart] = None) -> tuple[TaskData, Optional[bool]]:
    """A labelled validation set: a class-stratified `fraction` of the TRAIN split (never the test
    split, which stays for eval and front), chosen before any image is decoded. `finetuning`: the
    part of the train split that the zoo's towers trained on; the validation set is then drawn from
    the other images, which no tower has seen (all of them when they are fewer than `fraction` of
    the split). Also whether its images are unseen by the towers: True, False (they trained on
    every train image), None (`finetuning` not given: nobody says)."""
    parsed = parse_spec(spec)
    if parsed.kind == "folder":
        listing = list_folder_split(_existing_dir(parsed), "train")
        indices, unseen = _validation_indices(np.asarray(listing.labels), fraction, seed, finetuning)
        return TaskData(decode_images([listing.paths[i] for i in indices], preprocess),
                        _labels_tensor(np.asarray(listing.labels)[indices]), list(listing.classes)), unseen
    raw = load_raw(parsed, "train")
    indices, unseen = _validation_indices(np.asarray(raw.labels), fraction, seed, finetuning)
    raw = raw.take(indices)
    return TaskData(images_to_tensor(raw.images, preprocess), _labels_tensor(raw.labels), list(raw.classes)), unseen


def _validation_indices(labels: np.ndarray, fraction: float, seed: int,
                        finetuning: Optional[TrainingPart]) -> tuple[np.ndarray, Optional[bool]]:
    seen = None if finetuning is None else finetuning.indices(labels)
    if seen is None:  # the towers trained on the whole split (or nobody says): a part of it
        return stratified_indices(labels, fraction, seed), None if finetuning is None else False
    unseen = np.setdiff1d(np.arange(len(labels)), seen)
    share = fraction * len(labels) / len(unseen)  # of the unseen images, for `fraction` of the split
    return (unseen if share >= 1 else unseen[stratified_indices(labels[unseen], share, seed)]), True


def load_raw(parsed: DatasetSpec, split: str) -> RawSplit:
    """An array dataset's split as 8-bit pixels (not a folder's: its files are decoded as they are read)."""
    if parsed.kind == "folder":
        raise DatasetError(f"{parsed.target}: a folder dataset has no raw arrays; read its files")
    if parsed.kind == "idx":
        return load_idx_split(_existing_dir(parsed), split)
    return get_builtin(parsed.target).load(split)


def _load_folder(parsed: DatasetSpec, split: str, preprocess: Preprocess, part: TrainingPart) -> TaskData:
    listing = list_folder_split(_existing_dir(parsed), split)
    paths, labels = listing.paths, listing.labels
    # Pick the subset before decoding: only the chosen files are read.
    indices = part.indices(np.asarray(labels))
    if indices is not None:
        paths, labels = [paths[i] for i in indices], labels[indices]
    return TaskData(decode_images(paths, preprocess), _labels_tensor(labels), list(listing.classes))


def _existing_dir(parsed: DatasetSpec) -> Path:
    if not parsed.path.is_dir():
        raise DatasetError(f"dataset spec '{parsed.kind}:{parsed.target}': directory {parsed.path} does not exist")
    return parsed.path


def _labels_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(labels, dtype=np.int64))
