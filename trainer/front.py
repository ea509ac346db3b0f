"""The Pareto front of a family, and of preference-aware baselines at the same preferences.

Preferences: the simplex grid with N divisions, the anchors every report compares (equal, and 0.7
on each task with the rest spread evenly) and M Dirichlet(1) draws, de-duplicated canonically.
For each preference the family is materialised and its per-task test accuracy measured; each
baseline is merged at that preference from the zoo's task vectors and measured the same way:

- `ta-pref`: task arithmetic + preference, theta0 + s sum_k K pref_k tau_k (cheap: a weighted sum);
- `adamerging-pref`: AdaMerging + preference, one whole optimisation of `baseline_steps` steps per
  preference on the tasks' unlabeled test images (the AdaMerging / Pareto Merging protocol).

Point-set families add their members, each evaluated ("<name>: members"), and where their
method predicted them (MAP), the members' predicted validation accuracies ("<name>: predicted").
Sets of task-arithmetic coefficients c in [0, c_max]^K, evaluated with no surrogate:

- `direct-search`: a Sobol design of as many points as the MAP family's real evaluations
  (MAP's peer at the same budget; `--direct-search N` sets N);
- `ground-truth grid:N` (K <= 3): the dense grid of N^K points, the reference front; every model's
  IGD+ (pymoo) against it is reported beside its hypervolume.

Per model: the non-dominated points and their hypervolume (reference: all-zero accuracy), and
what it gives up (`TradeOff`): its worst vertex against the fine-tuned towers (task k's accuracy
at the one-hot preference of k over fine-tuned tower k's) and its equal preference against the
best of the single merges of `merges` (average accuracies), measured on the same test images.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator
from pymoo.indicators.igd_plus import IGDPlus

from models_store import StoreError
from models_store.checkpoint import StateDict
from models_store.family import Family
from models_store.preference import Preference, equal_preference, from_weights
from models_store.simplex import PointSet, priority_preference, vertices
from models_store.zoo import Zoo

from .coefficients import SearchBox, normalised, sobol
from .evaluate import CoefficientEvaluator, Evaluator, Scores
from .hypervolume import hypervolume, non_dominated
from .methods import MergeContext, get_method
from .pool import ModelPool
from .taskpool import load_test_sets, recorded_specs

FAMILY = "family"
MEMBERS = f"{FAMILY}: members"


class FrontConfig(PointSet):
    baselines: list[str] = Field(["ta-pref", "adamerging-pref"], description=(
        "merged from the zoo at every preference, or none: ta-pref (theta0 + s sum_k K pref_k tau_k), "
        "adamerging-pref (one whole AdaMerging run of --baseline-steps per preference)"))
    merges: list[str] = Field(["task-arithmetic", "ties", "tsv-m", "iso-c", "iso-cts"], description=(
        "single merges (`pmerge merge` methods, their defaults) whose best average the equal preference is measured "
        "against, beside the fine-tuned towers at the vertices; none: neither"))
    ta_scale: float = Field(0.3, ge=0, description="task arithmetic scale s")
    baseline_steps: int = Field(100, ge=0, description="AdaMerging steps per preference")
    test_limit: Optional[int] = Field(None, ge=1, description="test images per task")
    ground_truth: Optional[str] = Field(None, pattern=r"^grid:([2-9]|[1-9][0-9]+)$", description=(
        "grid:N (K <= 3): evaluate the N^K grid of c in [0, c_max]^K as the reference front and report each "
        "model's IGD+ against it"))
    direct_search: Optional[int] = Field(None, ge=0, description=(
        "Sobol points of c in [0, c_max]^K evaluated with no surrogate, their non-dominated set (default: as many "
        "as a MAP family of the front spent in real evaluations, else none; 0: none)"))
    c_max: Optional[float] = Field(None, gt=0, description="the box of the ground truth and of direct search "
                                                           "(default: the MAP family's, else 1.0)")

    @property
    def grid_steps(self) -> Optional[int]:
        return int(self.ground_truth.split(":")[1]) if self.ground_truth else None

    @field_validator("merges")
    @classmethod
    def _known_merges(cls, names: list[str]) -> list[str]:
        from .methods import METHODS
        return known_names(names, METHODS, "merge")

    @field_validator("baselines")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_names(names, BASELINES, "baseline")


def known_names(names: list[str], known, what: str) -> list[str]:
    """A list flag of names from `known`: `none` means none; an unknown name is an error naming it."""
    if [n.lower() for n in names] == ["none"]:
        return []
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
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
    per_preference: bool = True  # one point per preference of the report (else a set of candidates)
    igd_plus: Optional[float] = None  # against the ground-truth front, when there is one
    disk_bytes: Optional[int] = None  # a family's files (None: a baseline, nothing stored)
    resident_bytes: dict[str, int] = field(default_factory=dict)  # serving dtype -> bytes held on the device

    def point(self, pref: Preference) -> Optional[FrontPoint]:
        """The point of that preference (a set of candidates has none)."""
        if not self.per_preference:
            return None
        return next((p for p in self.points if p.preference.canonical == pref.canonical), None)


@dataclass
class References:
    """What every model's trade-offs are measured against, on the report's test images."""
    finetuned: Scores  # task -> fine-tuned tower k's accuracy on task k
    merges: dict[str, float]  # single merge -> its average accuracy


@dataclass
class TradeOff:
    """What one model gives up: at its worst vertex, and at the equal preference."""
    worst_vertex_task: str
    worst_vertex_accuracy: float
    finetuned_accuracy: float
    equal_average: float
    best_merge: str
    best_merge_average: float

    @property
    def vertex_over_finetuned(self) -> float:
        return self.worst_vertex_accuracy / self.finetuned_accuracy

    @property
    def equal_over_best_merge(self) -> float:
        return self.equal_average / self.best_merge_average


@dataclass
class FrontReport:
    family_id: str
    method: str
    tasks: list[str]
    preferences: list[Preference]
    config: FrontConfig
    models: dict[str, ModelFront] = field(default_factory=dict)
    references: Optional[References] = None

    @property
    def equal(self) -> Preference:
        return equal_preference(self.tasks)

    def trade_offs(self) -> dict[str, TradeOff]:
        """Per model with a point at the equal preference and at every vertex (none without references)."""
        refs = self.references
        if refs is None or not refs.merges:
            return {}
        best = max(refs.merges, key=refs.merges.__getitem__)
        out = {}
        for name, model in self.models.items():
            equal = model.point(self.equal)
            at_vertex = {t: model.point(v) for t, v in zip(self.tasks, vertices(self.tasks))}
            reached = {t: p.accuracy[t] for t, p in at_vertex.items() if p is not None}
            if equal is None or len(reached) < len(at_vertex):
                continue
            task = min(reached, key=lambda t: reached[t] / refs.finetuned[t])
            out[name] = TradeOff(task, reached[task], refs.finetuned[task], equal.average, best, refs.merges[best])
        return out

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


def sweep(name: str, merge: Merger, prefs: list[Preference], evaluator: Evaluator,
          log: Callable[[str], None]) -> ModelFront:
    """Merge and evaluate one model at every preference."""
    start = time.perf_counter()
    points = [FrontPoint(p, evaluator.accuracy(merge(p))) for p in prefs]
    seconds = time.perf_counter() - start
    log(f"{name}: {len(prefs)} preferences in {seconds:.1f} s")
    return ModelFront(name, points, seconds)


def family_costs(family: Family) -> tuple[int, dict[str, int]]:
    """A family's bytes on disk, and on the device when served in float32 (a CPU) and bfloat16 (a GPU)."""
    resident = {str(d).removeprefix("torch."): sum(c.resident_bytes for c in family.costs(d))
                for d in (torch.float32, torch.bfloat16)}
    return sum(c.disk_bytes for c in family.costs(torch.float32)), resident


def ta_pref(ctx: MergeContext, cfg: FrontConfig) -> Merger:
    method = get_method("task-arithmetic")
    return lambda p: method(ctx, method.config.model_validate({"scale": cfg.ta_scale, "preference": p}))


def adamerging_pref(ctx: MergeContext, cfg: FrontConfig) -> Merger:
    method = get_method("adamerging")
    return lambda p: method(ctx, method.config.model_validate({"steps": cfg.baseline_steps, "preference": p}))


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


def references(ctx: MergeContext, merges: list[str], evaluator: Evaluator, log: Callable[[str], None]) -> References:
    """The fine-tuned towers, each on its own task, and the single merges' averages."""
    start = time.perf_counter()
    finetuned = {t: evaluator.accuracy(ctx.pool.zoo.finetuned(t), [t])[t] for t in evaluator.tasks}
    averages = {}
    for name in merges:
        scores = evaluator.accuracy(get_method(name)(ctx))
        averages[name] = sum(scores.values()) / len(scores)
    log(f"references: fine-tuned towers and {len(merges)} single merges in {time.perf_counter() - start:.1f} s")
    return References(finetuned, averages)


# ---- point sets and sets of coefficients ------------------------------------------------------

def member_fronts(name: str, family: Family, evaluator: Evaluator, log: Callable[[str], None]) -> list[ModelFront]:
    """A family's members (a point-set's), each evaluated, and their predicted accuracies where its
    method predicted them (MAP's, oriented so that higher is better)."""
    members = family.body.members()
    if not members:
        return []
    start = time.perf_counter()
    prefs = [from_weights(m["preference"], family.tasks) for m in members]
    evaluated = [FrontPoint(p, evaluator.accuracy(dict(family.body.materialize(i, evaluator.device))))
                 for i, p in enumerate(prefs)]
    seconds = time.perf_counter() - start
    log(f"{name}: {len(evaluated)} members in {seconds:.1f} s")
    out = [ModelFront(f"{name}: members", evaluated, seconds, per_preference=False)]
    predicted = [m.get("predicted") for m in members]
    if None not in predicted:
        points = [FrontPoint(p, dict(zip(family.tasks, v))) for p, v in zip(prefs, predicted)]
        out.append(ModelFront(f"{name}: predicted", points, 0.0, per_preference=False))
    return out


def search_box(families: Sequence[Family]) -> Optional[SearchBox]:
    """The box and budget of the first family whose members were searched (MAP's learners); read
    from the manifest's hyperparameters and metrics for families from before `search` was typed."""
    for f in families:
        box = SearchBox.of(f.manifest.metrics)
        if box is not None:
            return box
        spent = f.manifest.metrics.get("real_evaluations")
        if isinstance(spent, (int, float)):
            hp = f.manifest.hyperparameters
            return SearchBox(c_max=hp.get("c_max", 1.0), real_evaluations=spent, seed=hp.get("seed", 0))
    return None


def coefficient_front(name: str, points: np.ndarray, evaluator: CoefficientEvaluator, tasks: list[str],
                      log: Callable[[str], None]) -> ModelFront:
    start = time.perf_counter()
    front = [FrontPoint(from_weights(normalised(c), tasks), dict(zip(tasks, evaluator(c).accuracy))) for c in points]
    seconds = time.perf_counter() - start
    log(f"{name}: {len(points)} points in {seconds:.1f} s")
    return ModelFront(name, front, seconds, per_preference=False)


def coefficient_sets(cfg: FrontConfig, families: Sequence[Family], k: int) -> dict[str, np.ndarray]:
    """Direct search and the ground-truth grid, as the settings and the MAP family ask."""
    box = search_box(families)
    c_max = cfg.c_max or (box.c_max if box is not None else 1.0)
    budget = cfg.direct_search
    if budget is None:
        budget = round(box.real_evaluations) if box is not None else 0
    sets = {}
    if budget:
        sets["direct-search"] = sobol(k, budget, c_max, box.seed if box is not None else cfg.seed)
    if cfg.grid_steps:
        if k > 3:
            raise StoreError(f"--ground-truth grid:{cfg.grid_steps} evaluates {cfg.grid_steps}^K points: it is for "
                             f"K <= 3 tasks, this family has {k}")
        axis = np.linspace(0.0, c_max, cfg.grid_steps)
        sets[f"ground-truth {cfg.ground_truth}"] = np.stack(np.meshgrid(*[axis] * k, indexing="ij"), -1).reshape(-1, k)
    return sets


def mark_igd_plus(report: FrontReport, truth: ModelFront) -> None:
    """IGD+ (pymoo, on 1 - accuracy: minimised) of every model's non-dominated points against the truth's."""
    def errors(model: ModelFront) -> np.ndarray:
        return np.array([[1.0 - p.accuracy[t] for t in report.tasks] for p in model.points if p.on_front])

    indicator = IGDPlus(errors(truth))
    for model in report.models.values():
        model.igd_plus = float(indicator(errors(model)))


def compute_front(family: Family, cfg: FrontConfig, device: torch.device, zoo: Optional[str | Path] = None,
                  log: Callable[[str], None] = print, families: Sequence[Family] = ()) -> FrontReport:
    """The front of `family`, of each of `families` (any kind, same tasks), of the baselines and of
    the coefficient sets (direct search, the ground truth)."""
    tasks = family.tasks
    for other in families:
        if other.tasks != tasks:
            raise StoreError(f"family {other.family_id} has tasks {other.tasks}, family {family.family_id} has {tasks}")
    named = {FAMILY: family} | {other.family_id: other for other in families}
    sets = coefficient_sets(cfg, list(named.values()), len(tasks))  # fail before any work
    pool = ModelPool(baseline_zoo(family, zoo)) if cfg.baselines or cfg.merges or sets else None
    prefs = front_preferences(tasks, cfg)
    specs = recorded_specs(family.manifest.tasks, f"family {family.family_id}")
    test = load_test_sets(specs, family.manifest.preprocess, cfg.test_limit)
    report = FrontReport(family.family_id, family.manifest.method, tasks, prefs, cfg)
    for name, member in named.items():
        evaluator = Evaluator(member.manifest.architecture, member.heads, test, device)
        merge = (lambda m: lambda p: dict(m.iter_materialized(p, device)))(member)  # merged on the device
        report.models[name] = sweep(name, merge, prefs, evaluator, log)
        report.models[name].disk_bytes, report.models[name].resident_bytes = family_costs(member)
        report.models |= {m.name: m for m in member_fronts(name, member, evaluator, log)}
    if pool is not None and (cfg.baselines or cfg.merges):
        # AdaMerging adapts on the tasks' test images without labels (its and the paper's protocol)
        ctx = MergeContext(pool=pool, unlabeled={t: test[t].images for t in tasks}, device=device,
                           seed=cfg.seed, progress=False)
        evaluator = Evaluator(pool.architecture, pool.heads, test, device)
        for name in cfg.baselines:
            report.models[name] = sweep(name, BASELINES[name](ctx, cfg), prefs, evaluator, log)
        if cfg.merges:
            report.references = references(ctx, cfg.merges, evaluator, log)
    if pool is not None and sets:
        by_coefficients = CoefficientEvaluator(pool, test, device)
        for name, points in sets.items():
            report.models[name] = coefficient_front(name, points, by_coefficients, tasks, log)
    for model in report.models.values():
        mark_front(model, tasks)
    if cfg.grid_steps:
        mark_igd_plus(report, report.models[f"ground-truth {cfg.ground_truth}"])
    return report
