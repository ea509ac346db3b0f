"""The zoo contract (docs/formats.md, "Zoo"): a pretrained tower, K fine-tuned towers and their heads."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from . import StoreError
from .atomic import atomic_dir, write_text
from .checkpoint import StateDict, load_state_dict, save_state_dict, sha256_file
from .manifest import check_format, read_manifest
from .preprocess import Preprocess

if TYPE_CHECKING:
    import torch

ZOO_FORMAT = 2  # 2: each tensor file's sha256 and the towers' training split recorded; 1 is still read
MANIFEST = "zoo.json"
# {file: [size, mtime_ns, inode]} of tensor files whose bytes matched their recorded sha256: a file
# unchanged since is not hashed again (a rewritten one is, and is refused if it differs)
VERIFIED = ".verified.json"
PRETRAINED = "pretrained.safetensors"
FINETUNED = "finetuned.safetensors"
HEAD = "head.safetensors"


class TaskInfo(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    classes: list[str] = Field(min_length=2)
    data: Optional[str] = None  # dataset spec the task was built from (trainer.data), or null


class TrainingSplit(BaseModel):
    """The part of each task's train split that the zoo's towers trained on: a class-stratified
    `holdout` fraction (drawn with `seed`) set apart, then `train_limit` of the rest (None: all)."""
    train_limit: Optional[int] = None
    seed: int = 0
    holdout: float = Field(0.0, ge=0, lt=1)


class ZooManifest(BaseModel):
    format: int = ZOO_FORMAT
    architecture: dict[str, Any]
    preprocess: Preprocess
    tasks: list[TaskInfo] = Field(min_length=1)
    # tensor file (relative to the zoo) -> sha256, written by `write_zoo` (empty in format 1)
    files: dict[str, str] = {}
    # what `pmerge zoo` trained the towers on; None where unknown (imported towers, format 1)
    training: Optional[TrainingSplit] = None
    metrics: dict[str, Any] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        return check_format("zoo", v, ZOO_FORMAT, older=(1,))

    @model_validator(mode="after")
    def _every_file_hashed(self) -> "ZooManifest":
        expected = set(tensor_files(self.task_names))
        if self.files and set(self.files) != expected:
            raise ValueError(f"files must give the sha256 of exactly {sorted(expected)}, got {sorted(self.files)}")
        return self

    def identity(self) -> dict[str, Any]:
        """What says which zoo this is, for a family's id: the manifest less what was added to it
        later (its metrics, the hashes the id takes from the files, the training split)."""
        return self.model_dump(exclude={"metrics", "files", "training"})

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
        self.verified: Optional[dict[str, list[int]]] = None  # VERIFIED, once read

    @property
    def tasks(self) -> list[str]:
        return self.manifest.task_names

    def task(self, name: str) -> TaskInfo:
        for t in self.manifest.tasks:
            if t.name == name:
                return t
        raise StoreError(f"zoo {self.root} has no task {name!r}; tasks are: {', '.join(self.tasks)}")

    def load(self, name: str) -> StateDict:
        """A tensor file of the zoo, checked against its recorded sha256 (format 2)."""
        self.verify([name])
        return load_state_dict(self.root / name)

    def verify(self, names: list[str]) -> None:
        """Check files against their recorded sha256, hashing only those changed on disk since they
        last matched (VERIFIED, read once per instance); a mismatch is a StoreError naming the file."""
        recorded = self.manifest.files
        if self.verified is None:
            try:
                seen = json.loads((self.root / VERIFIED).read_text())
            except (OSError, ValueError):
                seen = {}
            self.verified = seen if isinstance(seen, dict) else {}
        fresh = {}
        for name in names:
            if name not in recorded:
                continue
            path = self.root / name
            now = signature(path)
            if self.verified.get(name) == now:
                continue
            if sha256_file(path) != recorded[name]:
                raise StoreError(f"{path} does not match its sha256 in {self.root / MANIFEST}: the file changed "
                                 f"after the zoo was written (write a new zoo: `pmerge zoo`, `pmerge import`)")
            fresh[name] = now
        if fresh:
            self.verified |= fresh
            try:
                write_text(self.root / VERIFIED, json.dumps(self.verified))
            except OSError:  # a read-only zoo: verified again next time
                pass

    def pretrained(self) -> StateDict:
        return self.load(PRETRAINED)

    def finetuned_tensor(self, task: str, key: str) -> "torch.Tensor":
        """One tensor of task's fine-tuned tower, read alone (a learner that streams the zoo); the
        file is checked as `load` checks it (hashed again only if it changed on disk)."""
        from safetensors import safe_open
        with safe_open(str(self._finetuned_file(task)), "pt") as f:  # opened per tensor: no mapping outlives its read
            return f.get_tensor(key)

    def stream_finetuned(self, task: str) -> "Iterator[tuple[str, torch.Tensor]]":
        """Task's fine-tuned tower one tensor at a time (checked as `load` checks it)."""
        from safetensors import safe_open
        with safe_open(str(self._finetuned_file(task)), "pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)

    def _finetuned_file(self, task: str) -> Path:
        self.task(task)
        name = f"{task}/{FINETUNED}"
        self.verify([name])
        return self.root / name

    def finetuned(self, task: str) -> StateDict:
        self.task(task)
        return self.load(f"{task}/{FINETUNED}")

    def head(self, task: str) -> Head:
        self.task(task)
        state = self.load(f"{task}/{HEAD}")
        if "weight" not in state:
            raise StoreError(f"{self.root / task / HEAD} has no 'weight' tensor")
        return Head(weight=state["weight"], bias=state.get("bias"))

    @cached_property
    def heads(self) -> dict[str, Head]:
        return {t: self.head(t) for t in self.tasks}

    @cached_property
    def weights_sha256(self) -> dict[str, str]:
        """{file: sha256} of every tensor file: what the towers and heads are, which the manifest
        alone does not say (two builds or imports of one layout share a manifest). Recorded by the
        writer (format 2), else computed."""
        if self.manifest.files:
            self.verify(tensor_files(self.tasks))
            return dict(self.manifest.files)
        return {name: sha256_file(self.root / name) for name in tensor_files(self.tasks)}


def signature(path: Path) -> list[int]:
    """What changes when a file is rewritten or replaced: its size, modification time and inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


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
            weight, bias = heads[name].weight, heads[name].bias
            save_state_dict(tmp / name / HEAD, {"weight": weight} | ({} if bias is None else {"bias": bias}))
        files = {name: sha256_file(tmp / name) for name in tensor_files(names)}
        write_text(tmp / VERIFIED, json.dumps({name: signature(tmp / name) for name in files}))  # just hashed
        recorded = manifest.model_copy(update={"format": ZOO_FORMAT, "files": files})
        write_text(tmp / MANIFEST, recorded.model_dump_json(indent=2))
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
    hashes = zoo.weights_sha256
    manifest = zoo.manifest.model_copy(update={"tasks": [zoo.task(t) for t in tasks], "format": ZOO_FORMAT,
                                               "files": {name: hashes[name] for name in tensor_files(tasks)}})
    write_text(root / MANIFEST, manifest.model_dump_json(indent=2))
    return Zoo(root)
