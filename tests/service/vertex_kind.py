"""A small family kind that exists only in the tests: it shows what a new kind needs (its
parameters, `resolve` through `variant`, `materialize`) and that it then serves through the generic
servable, downloads and the HTTP API with no other change.

Kind `vertices`: K stored towers, one per task; a preference is served by the tower of its largest
weight (the first of equals). File: `towers.safetensors`, "<task>/<param>"."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from pydantic import BaseModel, ConfigDict

from models_store.checkpoint import StateDict, load_state_dict
from models_store.kinds.base import KindFormat
from models_store.tower import check_tower_state

NAME = "vertices"
TOWERS = "towers.safetensors"


class VertexParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VertexFamily(KindFormat):
    name = NAME
    files = (TOWERS,)
    Params = VertexParams

    def __init__(self, towers: list[StateDict], architecture: dict):
        self.towers, self.architecture = towers, architecture

    @classmethod
    def load(cls, path: Path, params: VertexParams, tasks: list[str], architecture: dict,
             family_id: str) -> "VertexFamily":
        stored = load_state_dict(path / TOWERS)
        towers = [{k.partition("/")[2]: v for k, v in stored.items() if k.partition("/")[0] == t} for t in tasks]
        for task, tower in zip(tasks, towers):
            check_tower_state(tower, architecture, f"family {family_id}: {TOWERS}, task {task}")
        return cls(towers, architecture)

    def variant(self, weights: tuple[float, ...]) -> int:
        return max(range(len(weights)), key=weights.__getitem__)

    def describe(self, variant) -> dict:
        return {"task": variant}

    def materialize(self, variant: int, device: torch.device = torch.device("cpu")) -> Iterator[tuple[str, torch.Tensor]]:
        for name, value in self.towers[variant].items():
            yield name, value.to(device)

    def tower_specs(self):
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.towers[0].items()]


def family_files(towers: dict[str, StateDict]) -> dict[str, StateDict]:
    return {TOWERS: {f"{t}/{k}": v for t, tower in towers.items() for k, v in tower.items()}}
