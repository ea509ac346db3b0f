"""MAP (seed 000): the Pareto set of task-arithmetic coefficient vectors c in [0, c_max]^K from
few real evaluations, as a servable point-set family (REFERENCE.md, "MAP").

1. labelled validation data: a class-stratified part of each task's TRAIN split (or --val);
2. a design of `budget` points (trainer/map/design.py), each one task-arithmetic merge evaluated
   on every task's validation data; evaluated points are saved as they come, so a killed run
   resumes without evaluating them again;
3. per task a quadratic surrogate of the metric (trainer/map/surrogate.py), its R^2 and
   leave-one-out error in the manifest's metrics;
4. NSGA-III on the surrogates (trainer/map/search.py): the predicted Pareto set, each member then
   evaluated for real ("MAP, real"), predicted and real metrics side by side in the member;
5. the family: one member per Pareto point, task-level coefficients c; pick rule `weighted-sum`
   (the paper's: the member maximising the preference-weighted predicted metric) or `tchebycheff`.

Bayesian MAP (`bmap`) spends the budget after a smaller initial design in error-driven rounds
(trainer/map/adaptive.py). Nested MAP (`nmap`) runs 2-D MAPs up a tree of the tasks
(trainer/map/nested.py); its members are the tree's models for a set of preferences, picked by
`nearest`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import Field

from models_store.atomic import write_text
from models_store.kinds.point_set import Member, SurrogateRule

from ...coefficients import SearchBox, normalised
from ...evaluate import CoefficientEvaluator, StageTimer, VectorScores
from ...progress import progress_bar
from ..point_set import PointsConfig, VectorsConfig, point_set_family
from ..registry import LearnContext, Learned, register_family
from ..validation import ValidationConfig, validation_sets
from .adaptive import next_points
from .design import Design, default_budget, design_points, surrogate_size
from .nested import NestedSearch, task_tree
from .search import fit_surrogates, surrogate_front
from .surrogate import Metric


class MapSearchConfig(ValidationConfig, VectorsConfig):
    budget: Optional[int] = Field(None, ge=1, description="real evaluations of the design (default 2 (K+1)(K+2)/2, "
                                                          "at least (K+1)(K+2)/2: the surrogate's parameters; "
                                                          "nmap: of each pairwise merge, K = 2)")
    c_max: float = Field(1.0, gt=0, description="the box [0, c_max]^K of task-arithmetic coefficients")
    metric: Metric = Field("accuracy", description="what the surrogates model: accuracy (through a sigmoid) or "
                                                   "mean cross-entropy (through a softplus)")
    design: Design = Field("sobol", description="the space-filling design (scipy.stats.qmc), beside the K one-hot and "
                                                "3 isotropic points")
    pick: Literal["weighted-sum", "tchebycheff"] = Field("weighted-sum", description=(
        "the scalarisation of the predicted metrics that serves a preference: the largest preference-weighted "
        "predicted metric (the paper's), or the smallest weighted Tchebycheff gap to the best predicted metric per task"))
    population: int = Field(100, ge=4, description="NSGA-III population (Das-Dennis reference directions)")
    generations: int = Field(200, ge=1, description="NSGA-III generations")
    eval_batch: int = Field(256, ge=1, description="validation images per forward pass")


class MapConfig(MapSearchConfig):
    at_preference: bool = Field(True, description=(
        "serve every preference with the coefficients the scalarisation picks on the surrogates (false: the member "
        "of the Pareto set that it picks)"))


def point_key(c) -> tuple[float, ...]:
    return tuple(round(float(x), 9) for x in c)


class EvaluationLog:
    """Every (point, task) evaluated so far and its scores, saved after each point, so a killed run
    resumes without evaluating them again (a resumed run recomputes the same points: same seed)."""

    def __init__(self, path: Path, resume: bool, progress: bool):
        self.path, self.progress = path, progress
        self.saved: dict[tuple[tuple[float, ...], str], tuple[float, float]] = {}  # -> (accuracy, loss)
        if resume and path.is_file():
            for e in json.loads(path.read_text())["evaluations"]:
                self.saved[(point_key(e["point"]), e["task"])] = (e["accuracy"], e["loss"])

    def _write(self) -> None:
        entries = [{"point": list(p), "task": t, "accuracy": a, "loss": l} for (p, t), (a, l) in self.saved.items()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"evaluations": entries}))

    def evaluate(self, evaluator: CoefficientEvaluator, points: np.ndarray, desc: str,
                 tasks: Optional[Sequence[str]] = None) -> list[VectorScores]:
        """Scores of `points` on `tasks` (default: every task); what was saved is reused."""
        tasks = list(tasks or evaluator.tasks)
        out = []
        for c in progress_bar(points, desc=desc, disable=not self.progress):
            key = point_key(c)
            missing = [t for t in tasks if (key, t) not in self.saved]
            if missing:
                new = evaluator(c, missing)
                self.saved.update({(key, t): (a, l) for t, a, l in zip(missing, new.accuracy, new.loss)})
                self._write()
            out.append(VectorScores([self.saved[key, t][0] for t in tasks], [self.saved[key, t][1] for t in tasks]))
        return out


def by_stage(timer: StageTimer) -> dict[str, float]:
    """A MAP run's seconds by stage, every stage named (zero when it did not run)."""
    return {name: round(timer.seconds.get(name, 0.0), 3) for name in ("merge", "evaluate", "fit", "nsga3")}


def metric_matrix(scores: list[VectorScores], metric: Metric) -> np.ndarray:
    return np.array([getattr(s, metric) for s in scores])  # [n, K]


def real_metrics(tasks: list[str], scores: VectorScores) -> dict[str, float]:
    return {f"{name}.{t}": v for name, values in (("real_accuracy", scores.accuracy), ("real_loss", scores.loss))
            for t, v in zip(tasks, values)}


def front_family(ctx: LearnContext, config: MapConfig, method: str, points: np.ndarray, scores: list[VectorScores],
                 evaluator: CoefficientEvaluator, log: EvaluationLog, extra: dict) -> Learned:
    """Surrogates, NSGA-III, the front evaluated for real, and the point-set family."""
    tasks = ctx.zoo.tasks
    surrogates, front, predicted = surrogate_front(points, metric_matrix(scores, config.metric), config.metric,
                                                   config.c_max, config.population, config.generations, config.seed,
                                                   evaluator.timer)
    real = log.evaluate(evaluator, front, f"{method}: evaluate the front")
    members = [Member(preference=normalised(c), coefficients=[float(x) for x in c], predicted=p.tolist(),
                      metrics=real_metrics(tasks, r)) for c, p, r in zip(front, predicted, real)]
    metrics = {"evaluations": {"design": len(points), "front": len(front)}, "real_evaluations": len(points) + len(front),
               "surrogates": {t: {"r2": round(s.r2, 5), "loo_rmse": round(s.loo_rmse, 5)} for t, s in zip(tasks, surrogates)},
               "seconds_by_stage": by_stage(evaluator.timer)} | extra
    search = SearchBox(c_max=config.c_max, real_evaluations=metrics["real_evaluations"], seed=config.seed)
    rule = SurrogateRule(metric=config.metric, scalarisation=config.pick, c_max=config.c_max,
                         weights=[s.weights.tolist() for s in surrogates]) if config.at_preference else None
    return point_set_family(ctx, config, members, pick=config.pick, sense="max" if config.metric == "accuracy" else "min",
                            metrics=metrics, search=search, at_preference=rule)


def evaluation_log(ctx: LearnContext) -> EvaluationLog:
    """The design points evaluated so far, in the run directory."""
    return EvaluationLog(ctx.run_dir / "evaluations.json", ctx.resume, ctx.progress)


def learn_front(ctx: LearnContext, config: MapConfig, method: str) -> Learned:
    """MAP's whole run: the design (all of the budget, or BMAP's initial part and its rounds), the
    evaluations (resumable), then `front_family`."""
    evaluator = CoefficientEvaluator(ctx.pool, validation_sets(ctx, config), ctx.device, config.eval_batch)
    log = evaluation_log(ctx)
    k = len(ctx.zoo.tasks)
    budget = config.budget or default_budget(k)
    initial = (min(budget, config.initial or surrogate_size(k) + k) if isinstance(config, BayesianMapConfig)
               else budget)
    points = design_points(k, initial, config.c_max, config.design, config.seed)
    scores = log.evaluate(evaluator, points, f"{method}: evaluate")
    extra: dict = {}
    if isinstance(config, BayesianMapConfig):
        points, scores, extra = error_driven_rounds(config, points, scores, budget, evaluator, log)
    return front_family(ctx, config, method, points, scores, evaluator, log, extra)


@register_family("map", MapConfig, "MAP: quadratic surrogates of the task-arithmetic coefficients' metrics and "
                 "their NSGA-III Pareto set, from labelled validation data (kind point-set)")
def learn(ctx: LearnContext, config: MapConfig):
    return learn_front(ctx, config, "map")


class BayesianMapConfig(MapConfig):
    initial: Optional[int] = Field(None, ge=1, description="bmap: the initial design's points (default (K+1)(K+2)/2 "
                                                           "+ K, at most the budget)")
    rounds: int = Field(4, ge=1, description="bmap: rounds of error-driven sampling after the initial design")
    temperature: float = Field(1.0, gt=0, description="bmap: softmax temperature over the bins' scores (relative to "
                                                      "their mean)")


def error_driven_rounds(config: BayesianMapConfig, points: np.ndarray, scores: list[VectorScores], budget: int,
                        evaluator: CoefficientEvaluator, log: EvaluationLog) -> tuple[np.ndarray, list[VectorScores], dict]:
    """BMAP's rounds until the budget is spent (trainer/map/adaptive.py)."""
    rng = np.random.default_rng(config.seed)
    rounds: list[dict] = []
    for r in range(config.rounds):
        count = (budget - len(points)) // (config.rounds - r)
        if count <= 0:  # fewer new points than rounds left: they go to the last rounds
            continue
        y = metric_matrix(scores, config.metric)
        surrogates = fit_surrogates(points, y, config.metric)
        new, bin_scores = next_points(points, y, surrogates, config.metric, count, config.c_max, config.temperature, rng)
        points = np.vstack([points, new])
        scores = log.evaluate(evaluator, points, f"bmap: round {r + 1}/{config.rounds}")
        rounds.append({"added": len(new), "bin_scores": [round(float(x), 5) for x in bin_scores]})
    return points, scores, {"rounds": rounds, "initial": len(points) - sum(r["added"] for r in rounds)}


@register_family("bmap", BayesianMapConfig, "Bayesian MAP: MAP whose evaluations after a smaller initial design go "
                 "where the surrogates' error and bootstrap spread are largest (kind point-set)")
def learn_bayesian(ctx: LearnContext, config: BayesianMapConfig):
    return learn_front(ctx, config, "bmap")


class NestedMapConfig(MapSearchConfig, PointsConfig):
    pass


def task_gram(pool) -> np.ndarray:
    """<tau_i, tau_j> over every float parameter, in float64."""
    vectors = pool.task_vectors
    flat = [torch.cat([vectors[t][k].flatten().double() for k in pool.keys]) for t in pool.tasks]
    return torch.stack([torch.stack([a @ b for b in flat]) for a in flat]).numpy()


@register_family("nmap", NestedMapConfig, "Nested MAP: an agglomerative tree of pairwise merges of the tasks, "
                 "each a 2-D MAP; one member per preference of --points, the tree's merge for it (kind point-set)")
def learn_nested(ctx: LearnContext, config: NestedMapConfig):
    tasks = ctx.zoo.tasks
    tree = task_tree(task_gram(ctx.pool))
    evaluator = CoefficientEvaluator(ctx.pool, validation_sets(ctx, config), ctx.device, config.eval_batch)
    log = evaluation_log(ctx)

    def evaluate(points: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        names = [tasks[i] for i in indices]
        return metric_matrix(log.evaluate(evaluator, points, "nmap: " + "+".join(names), names), config.metric)

    search = NestedSearch(evaluate, config.metric, config.budget or default_budget(2), config.c_max, config.design,
                          config.population, config.generations, config.seed, config.pick, evaluator.timer)
    prefs = config.points.preferences(tasks)
    chosen = np.array([search.coefficients(tree, np.array(p.weights)) for p in prefs])
    pairwise = evaluator.timer.counts.get("task_evaluations", 0)
    real = log.evaluate(evaluator, chosen, "nmap: evaluate the members")
    members = [Member(preference=p.weights, coefficients=[float(x) for x in c], metrics=real_metrics(tasks, r))
               for p, c, r in zip(prefs, chosen, real)]
    k = len(tasks)
    metrics = {"tree": tree.names(tasks), "pairwise_maps": len(search.fronts),
               "real_evaluations": round(pairwise / k + len(prefs), 2),
               "evaluations": {"pairwise_task_evaluations": pairwise,
                               "pairwise_full_equivalent": round(pairwise / k, 2),
                               "members": len(prefs),
                               "map_default_design": default_budget(k)},
               "seconds_by_stage": by_stage(evaluator.timer)}
    box = SearchBox(c_max=config.c_max, real_evaluations=metrics["real_evaluations"], seed=config.seed)
    return point_set_family(ctx, config, members, metrics=metrics, search=box)
