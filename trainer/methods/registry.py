"""One registry of merging methods (mergekit style): a decorator registers a function by name
together with its pydantic config. Adding a method touches one new module and one line of MODULES."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict

from models_store.checkpoint import StateDict

from ..pool import ModelPool
from ..registry import Entry, Registry


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class MergeContext:
    """What a method may use beside its config: the pool and, for test-time methods, unlabeled images."""
    pool: ModelPool
    unlabeled: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> images [N, C, S, S]
    device: torch.device = torch.device("cpu")
    seed: int = 0
    progress: bool = True


MergeFn = Callable[[MergeContext, MethodConfig], StateDict]


@dataclass(frozen=True)
class Method(Entry[MethodConfig]):
    needs_data: bool = False

    def __call__(self, ctx: MergeContext, config: Optional[MethodConfig] = None) -> StateDict:
        return self.fn(ctx, config or self.config())


# name -> the module that registers it (imported on the name's first use), in listing order
MODULES = {name: f"trainer.methods.{module}" for name, module in (
    ("weight-average", "weight_average"), ("task-arithmetic", "task_arithmetic"), ("ties", "ties"),
    ("adamerging", "adamerging"), ("adamerging++", "adamerging"), ("tsv-m", "tsv_m"), ("iso-c", "iso"),
    ("iso-cts", "iso"), ("wudi", "wudi"))}
METHODS: Registry[Method] = Registry("merging method", MODULES)


def register(name: str, config: type[MethodConfig], summary: str, needs_data: bool = False):
    def wrap(fn: MergeFn) -> MergeFn:
        METHODS.add(name, Method(name, config, fn, summary, needs_data))
        return fn
    return wrap


def get_method(name: str) -> Method:
    return METHODS[name]
