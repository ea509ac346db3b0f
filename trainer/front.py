"""The Pareto front of a family, and of preference-aware baselines at the same preferences.

Preferences: the simplex grid with N divisions, the anchors every report compares (equal, and 0.7
on each task with the rest spread evenly) and M Dirichlet(1) draws, de-duplicated canonically.
For each preference the family is materialised and its per-task test accuracy measured; each
baseline is merged at that preference from the zoo's task vectors and measured the same way:

- `ta-pref`: task arithmetic + preference, theta0 + s sum_k K pref_k tau_k (cheap: a weighted sum);
- `adamerging-pref`: AdaMerging + preference, one whole optimisation of `baseline_steps` steps per
  preference on the tasks' unlabeled test images (the AdaMerging / Pareto Merging protocol).

Per model: the non-dominated points and their hypervolume (reference: all-zero accuracy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from pydantic import Field, field_validator

from models_store import StoreError
from models_store.checkpoint import StateDict
from models_store.family import Family
from models_store.preference import Preference, equal_preference
from models_store.tower import build_tower
from models_store.zoo import Zoo

from .data import TaskData
from .evaluate import Scores, evaluate_tower
from .hypervolume import hypervolume, non_dominated
from .methods import MergeContext, get_method
from .pool import ModelPool
from .simplex import PointSet, priority_preference
from .taskpool import load_test_sets, recorded_specs

FAMILY = "family"


class FrontConfig(PointSet):
    baselines: list[str] = Field(["ta-pref", "adamerging-pref"], description=(
        "merged from the zoo at every preference, or none: ta-pref (theta0 + s sum_k K pref_k tau_k), "
        "adamerging-pref (one whole AdaMerging run of --baseline-steps per preference)"))
    ta_scale: float = Field(0.3, ge=0, description="task arithmetic scale s")
    baseline_steps: int = Field(100, ge=0, description="AdaMerging steps per preference")
    test_limit: Optional[int] = Field(None, ge=1, description="test images per task")

    @field_validator("baselines")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        if [n.lower() for n in names] == ["none"]:
            return []
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINES)}")
        return list(dict.fromkeys(names))


@dataclass
class FrontPoint:
    preference: Preference
    accuracy: Scores  # task -> accuracy in [0, 1]
    on_front: bool = False

    @property
    def average(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy)


@dataclass
class ModelFront:
    name: str
    points: list[FrontPoint]
    seconds: float
    hypervolume: float = 0.0

    def point(self, pref: Preference) -> Optional[FrontPoint]:
        return next((p for p in self.points if p.preference.canonical == pref.canonical), None)


@dataclass
class FrontReport:
    family_id: str
    method: str
    tasks: list[str]
    preferences: list[Preference]
    config: FrontConfig
    models: dict[str, ModelFront] = field(default_factory=dict)

    @property
    def equal(self) -> Preference:
        return equal_preference(self.tasks)

    def priority(self) -> dict[str, Preference]:
        """0.7 on each task (the quality bar's rows), for the tasks whose point is in the set."""
        known = {p.canonical for p in self.preferences}
        prefs = {t: priority_preference(self.tasks, t) for t in self.tasks}
        return {t: p for t, p in prefs.items() if p.canonical in known}


def front_preferences(tasks: list[str], cfg: FrontConfig) -> list[Preference]:
    return cfg.preferences(tasks)


def mark_front(model: ModelFront, tasks: list[str]) -> None:
    vectors = [[p.accuracy[t] for t in tasks] for p in model.points]
    for point, keep in zip(model.points, non_dominated(vectors)):
        point.on_front = keep
    model.hypervolume = hypervolume([v for v, p in zip(vectors, model.points) if p.on_front])


# ---- the models ------------------------------------------------------------------------------

Merger = Callable[[Preference], StateDict]


def sweep(name: str, merge: Merger, prefs: list[Preference], tower: torch.nn.Module, heads,
          test: dict[str, TaskData], device: torch.device, log: Callable[[str], None]) -> ModelFront:
    """Merge and evaluate one model at every preference."""
    start = time.perf_counter()
    points = [FrontPoint(p, evaluate_tower(tower, merge(p), heads, test, device)) for p in prefs]
    seconds = time.perf_counter() - start
    log(f"{name}: {len(prefs)} preferences in {seconds:.1f} s")
    return ModelFront(name, points, seconds)


def ta_pref(ctx: MergeContext, cfg: FrontConfig) -> Merger:
    method = get_method("task-arithmetic")
    return lambda p: method(ctx, method.config(scale=cfg.ta_scale, preference=p))


def adamerging_pref(ctx: MergeContext, cfg: FrontConfig) -> Merger:
    method = get_method("adamerging")
    return lambda p: method(ctx, method.config(steps=cfg.baseline_steps, preference=p))


BASELINES: dict[str, Callable[[MergeContext, FrontConfig], Merger]] = {
    "ta-pref": ta_pref, "adamerging-pref": adamerging_pref}


def baseline_zoo(family: Family, zoo: Optional[str | Path]) -> Zoo:
    """The zoo the family was trained from (its manifest records it), or the one given."""
    path = zoo or family.manifest.zoo
    if not path:
        raise StoreError(f"family {family.family_id} records no zoo, and baselines need its task vectors: "
                         f"pass --zoo ZOO (or --baselines none)")
    if not Path(path).is_dir():
        raise StoreError(f"zoo {path} (needed by the baselines) does not exist: pass --zoo ZOO "
                         f"(or --baselines none)")
    found = Zoo(path)
    if found.tasks != family.tasks:
        raise StoreError(f"zoo {path} has tasks {found.tasks}, family {family.family_id} has {family.tasks}")
    return found


def compute_front(family: Family, cfg: FrontConfig, device: torch.device, zoo: Optional[str | Path] = None,
                  log: Callable[[str], None] = print, families: Sequence[Family] = ()) -> FrontReport:
    """The front of `family`, of each of `families` (any kind, same tasks) and of the baselines."""
    tasks = family.tasks
    for other in families:
        if other.tasks != tasks:
            raise StoreError(f"family {other.family_id} has tasks {other.tasks}, family {family.family_id} has {tasks}")
    pool = ModelPool(baseline_zoo(family, zoo)) if cfg.baselines else None  # fail before any work
    prefs = front_preferences(tasks, cfg)
    specs = recorded_specs(family.manifest.tasks, f"family {family.family_id}")
    test = load_test_sets(specs, family.manifest.preprocess, cfg.test_limit)
    tower = build_tower(family.manifest.architecture)
    report = FrontReport(family.family_id, family.manifest.method, tasks, prefs, cfg)
    report.models[FAMILY] = sweep(FAMILY, family.materialize, prefs, tower, family.heads, test, device, log)
    for other in families:
        report.models[other.family_id] = sweep(other.family_id, other.materialize, prefs, tower, other.heads, test,
                                               device, log)
    if pool is not None:
        # AdaMerging adapts on the tasks' test images without labels (its and the paper's protocol)
        ctx = MergeContext(pool=pool, unlabeled={t: test[t].images for t in tasks}, device=device,
                           seed=cfg.seed, progress=False)
        for name in cfg.baselines:
            report.models[name] = sweep(name, BASELINES[name](ctx, cfg), prefs, tower, pool.heads, test, device, log)
    for model in report.models.values():
        mark_front(model, tasks)
    return report
