"""Family learners, registered by name, and the lifecycle every learner shares (FusionBench's
`method.run(modelpool)` discipline): the registry computes the family id, returns a family the
store already holds, gives the learner its run directory (where it checkpoints, so a killed run
resumes), times it, builds the manifest from the zoo and publishes. A learner only learns: it
returns its kind's files, `kind_params` and metrics (`Learned`).

`pmerge train LEARNER` learns its flags from the learner's config fields."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from models_store.checkpoint import StateDict
from models_store.family import FamilyManifest, now_iso, publish_family
from models_store.store import published
from models_store.zoo import Zoo

from ..family_id import family_id
from ..pool import ModelPool
from ..registry import Entry, Registry
from ..taskpool import TaskPool

RUNS = ".runs"  # STORE/.runs/<family_id>/: a run's checkpoints (no manifest.json there: never listed)


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # fields that change how a run goes, not the family it publishes (left out of the family id)
    id_exclude: ClassVar[frozenset[str]] = frozenset()


@dataclass
class LearnContext:
    """What a learner may use beside its config: the zoo, the store it publishes to, its data, and
    (set by the registry) the family's id and its run directory."""
    zoo: Zoo
    store: Path
    unlabeled_specs: dict[str, str] = field(default_factory=dict)  # task -> spec (default: test images)
    device: torch.device = torch.device("cpu")
    resume: bool = False
    progress: bool = True
    family_id: str = ""

    @property
    def run_dir(self) -> Path:
        """STORE/.runs/<family_id>: where a learner keeps what lets a killed run resume."""
        return Path(self.store) / RUNS / self.family_id

    @cached_property
    def pool(self) -> ModelPool:
        return ModelPool(self.zoo)

    @cached_property
    def unlabeled(self) -> dict[str, torch.Tensor]:
        """Each task's unlabeled images, read on first use (a learner without test-time data never reads them)."""
        return TaskPool(self.zoo, unlabeled=self.unlabeled_specs).unlabeled


@dataclass
class Learned:
    """What a learner hands the registry to publish: its kind's files and parameters, its metrics."""
    kind: str
    kind_params: dict[str, Any]
    files: dict[str, StateDict]
    metrics: dict[str, Any] = field(default_factory=dict)


LearnFn = Callable[[LearnContext, LearnerConfig], Learned]


@dataclass(frozen=True)
class FamilyLearner(Entry[LearnerConfig]):
    def family_id(self, ctx: LearnContext, config: LearnerConfig) -> str:
        return family_id(self.name, ctx.zoo, config, ctx.unlabeled_specs, config.id_exclude)

    def __call__(self, ctx: LearnContext, config: LearnerConfig | None = None) -> Path:
        """Learn and publish the family; returns its path (an identical published family is returned as is)."""
        config = config or self.config()
        ctx = copy.copy(ctx)  # keeps what it has read already (its pool, its unlabeled images)
        ctx.family_id = self.family_id(ctx, config)
        if (path := published(ctx.store, ctx.family_id)) is not None:
            return path
        began = time.perf_counter()
        learned = self.fn(ctx, config)
        zoo = ctx.zoo
        manifest = FamilyManifest(
            family_id=ctx.family_id, created=now_iso(), method=self.name,
            hyperparameters=config.model_dump() | {"unlabeled": ctx.unlabeled_specs}, zoo=str(zoo.root.resolve()),
            architecture=zoo.manifest.architecture, preprocess=zoo.manifest.preprocess, tasks=zoo.manifest.tasks,
            kind=learned.kind, kind_params=learned.kind_params,
            metrics={"train_seconds_this_run": round(time.perf_counter() - began, 2)} | learned.metrics)
        return publish_family(ctx.store, manifest, learned.files, ctx.pool.heads)


# name -> the module that registers it (imported on the name's first use), in listing order
MODULES = {name: f"trainer.families.{module}.learner" for name, module in (
    ("pm", "pareto"), ("pm++", "pareto"), ("ta-pref", "ta_pref"), ("adamerging-pref", "adamerging_pref"),
    ("map", "map"), ("bmap", "map"), ("nmap", "map"), ("hm3", "hm3"), ("react", "react"),
    ("react-anchored", "react"))}
FAMILIES: Registry[FamilyLearner] = Registry("family method", MODULES)


def register_family(name: str, config: type[LearnerConfig], summary: str):
    def wrap(fn: LearnFn) -> LearnFn:
        FAMILIES.add(name, FamilyLearner(name, config, fn, summary))
        return fn
    return wrap


def get_family_learner(name: str) -> FamilyLearner:
    return FAMILIES[name]
