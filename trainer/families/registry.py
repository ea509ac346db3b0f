"""One registry of family learners (beside methods/, the single-merge registry): a learner is a
function with its pydantic config, registered by name; `pmerge train --method NAME` looks it up
and learns its flags from the config's fields."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict

from models_store.zoo import Zoo

from ..family_id import family_id
from ..pool import ModelPool
from ..taskpool import TaskPool


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class LearnContext:
    """What a learner may use beside its config: the zoo, the store it publishes to, its data."""
    zoo: Zoo
    store: Path
    unlabeled_specs: dict[str, str] = field(default_factory=dict)  # task -> spec (default: test images)
    device: torch.device = torch.device("cpu")
    resume: bool = False
    progress: bool = True

    @cached_property
    def pool(self) -> ModelPool:
        return ModelPool(self.zoo)

    @cached_property
    def unlabeled(self) -> dict[str, torch.Tensor]:
        """Each task's unlabeled images, read on first use (a learner without test-time data never reads them)."""
        return TaskPool(self.zoo, unlabeled=self.unlabeled_specs).unlabeled

    def family_id(self, prefix: str, config: BaseModel, exclude: set[str] = frozenset()) -> str:
        return family_id(prefix, self.zoo, config, self.unlabeled_specs, exclude)


LearnFn = Callable[[LearnContext, LearnerConfig], Path]


@dataclass(frozen=True)
class FamilyLearner:
    name: str
    config: type[LearnerConfig]
    fn: LearnFn
    summary: str

    def __call__(self, ctx: LearnContext, config: LearnerConfig | None = None) -> Path:
        """Learn and publish the family; returns its path (an identical published family is returned as is)."""
        return self.fn(ctx, config or self.config())


FAMILIES: dict[str, FamilyLearner] = {}


def register_family(name: str, config: type[LearnerConfig], summary: str):
    def wrap(fn: LearnFn) -> LearnFn:
        if name in FAMILIES:
            raise ValueError(f"family learner {name!r} registered twice")
        FAMILIES[name] = FamilyLearner(name, config, fn, summary)
        return fn
    return wrap


def get_family_learner(name: str) -> FamilyLearner:
    if name not in FAMILIES:
        raise KeyError(f"unknown family method {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
