"""Dataset spec strings: `idx:DIR`, `folder:DIR`, `builtin:NAME`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.data.errors import DatasetError

KINDS = ("idx", "folder", "builtin")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    target: str  # a directory for idx/folder, a name for builtin

    @property
    def path(self) -> Path:
        return Path(self.target).expanduser()


def parse_spec(spec: str) -> DatasetSpec:
    kind, sep, target = spec.partition(":")
    if not sep or not target:
        raise DatasetError(f"dataset spec {spec!r} must look like KIND:TARGET with KIND in {', '.join(KINDS)}")
    if kind not in KINDS:
        raise DatasetError(f"dataset spec {spec!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return DatasetSpec(kind, target)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
