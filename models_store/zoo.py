"""The zoo contract (docs/formats.md, "Zoo"): a pretrained tower, K fine-tuned towers and their heads."""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, Field, field_validator

from . import StoreError
from .atomic import atomic_dir, write_text
from .checkpoint import StateDict, load_state_dict, save_state_dict

if TYPE_CHECKING:
    import torch
from .manifest import check_format, read_manifest
from .preprocess import Preprocess

ZOO_FORMAT = 1
MANIFEST = "zoo.json"
PRETRAINED = "pretrained.safetensors"
FINETUNED = "finetuned.safetensors"
HEAD = "head.safetensors"


class TaskInfo(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    classes: list[str] = Field(min_length=2)
    data: Optional[str] = None  # dataset spec the task was built from (trainer.data), or null


class ZooManifest(BaseModel):
    format: int = ZOO_FORMAT
    architecture: dict[str, Any]
    preprocess: Preprocess
    tasks: list[TaskInfo] = Field(min_length=1)
    metrics: dict[str, Any] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        return check_format("zoo", v, ZOO_FORMAT)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[TaskInfo]) -> list[TaskInfo]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


@dataclass(frozen=True)
class Head:
    """A task's classification head: logits = normalize(features) @ weight^T (+ bias)."""
    weight: "torch.Tensor"  # [C, D], the logit scale folded in
    bias: "Optional[torch.Tensor]" = None

    def to(self, device: "str | torch.device", dtype: "Optional[torch.dtype]" = None) -> "Head":
        """A copy on `device` (and in `dtype` when given)."""
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return Head(weight=self.weight.to(device, dtype), bias=bias)


def tensor_files(tasks: list[str]) -> list[str]:
    """The zoo's tensor files of `tasks`, relative to its root, pretrained first."""
    return [PRETRAINED] + [f"{t}/{name}" for t in tasks for name in (FINETUNED, HEAD)]


class Zoo:
    """A zoo on disk. Tensors are read lazily, one file at a time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest: ZooManifest = read_manifest(self.root / MANIFEST, ZooManifest)

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    def task(self, name: str) -> TaskInfo:
        for t in self.manifest.tasks:
            if t.name == name:
                return t
        raise StoreError(f"zoo {self.root} has no task {name!r}; tasks are: {', '.join(self.tasks)}")

    def pretrained(self) -> StateDict:
        return load_state_dict(self.root / PRETRAINED)

    def finetuned(self, task: str) -> StateDict:
        self.task(task)
        return load_state_dict(self.root / task / FINETUNED)

    def head(self, task: str) -> Head:
        self.task(task)
        state = load_state_dict(self.root / task / HEAD)
        if "weight" not in state:
            raise StoreError(f"{self.root / task / HEAD} has no 'weight' tensor")
        return Head(weight=state["weight"], bias=state.get("bias"))

    @cached_property
    def heads(self) -> dict[str, Head]:
        return {t: self.head(t) for t in self.tasks}

    @cached_property
    def weights_sha256(self) -> dict[str, str]:
        """{file: sha256} of every tensor file: what the towers and heads are, which the manifest
        alone does not say (two builds or imports of one layout share a manifest)."""
        out = {}
        for name in tensor_files(self.tasks):
            with open(self.root / name, "rb") as f:
                out[name] = hashlib.file_digest(f, "sha256").hexdigest()
        return out


def refuse_existing(root: Path) -> None:
    """A zoo is written into a new directory (or an empty one), never over another zoo."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    elif root.exists():
        what = "a zoo" if (root / MANIFEST).is_file() else "files"
        raise StoreError(f"{root} already holds {what}: give a new directory (nothing was written)")


def write_zoo(root: str | Path, manifest: ZooManifest, pretrained: StateDict,
              finetuned: dict[str, StateDict], heads: dict[str, Head]) -> Zoo:
    """Write every file of the zoo contract into a new directory, atomically: built beside it and
    renamed, so a failure part-way leaves no zoo, and never an old manifest beside new weights."""
    root = Path(root)
    names = manifest.task_names
    if set(finetuned) != set(names) or set(heads) != set(names):
        raise StoreError(f"finetuned and heads must cover exactly the tasks {names}")
    refuse_existing(root)
    with atomic_dir(root) as tmp:
        save_state_dict(tmp / PRETRAINED, pretrained)
        for name in names:
            save_state_dict(tmp / name / FINETUNED, finetuned[name])
            head = {"weight": heads[name].weight} | ({"bias": heads[name].bias} if heads[name].bias is not None else {})
            save_state_dict(tmp / name / HEAD, head)
        write_text(tmp / MANIFEST, manifest.model_dump_json(indent=2))
    return Zoo(root)


def write_subset(zoo: Zoo, tasks: list[str], root: str | Path) -> Zoo:
    """A zoo of some of `zoo`'s tasks, in that order: the same files, hard-linked where the file
    system allows (else copied); the manifest goes last."""
    root = Path(root)
    unknown = [t for t in tasks if t not in zoo.tasks]
    if unknown:
        raise StoreError(f"zoo {zoo.root} has no task {unknown[0]!r}; tasks are: {', '.join(zoo.tasks)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise StoreError(f"a subset needs one or more distinct tasks, got {tasks}")
    if (root / MANIFEST).exists():
        raise StoreError(f"{root} already holds a zoo: give a new directory (nothing was written)")
    for name in tensor_files(tasks):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # a half-written subset from a killed run
        try:
            os.link(zoo.root / name, target)
        except OSError:
            shutil.copyfile(zoo.root / name, target)
    manifest = zoo.manifest.model_copy(update={"tasks": [zoo.task(t) for t in tasks]})
    write_text(root / MANIFEST, manifest.model_dump_json(indent=2))
    return Zoo(root)
