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
"""
from __future__ import annotations

import json
import time
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from models_store.atomic import write_text
from models_store.kinds.point_set import Member

from ..data.load import load_dataset, load_validation
from ..map.design import Design, default_budget, design_points
from ..map.evaluate import Evaluator, Scores
from ..map.search import predicted_pareto_set
from ..map.surrogate import Metric, fit_surrogate
from ..progress import progress_bar
from .point_set import publish_point_set, published
from .registry import LearnContext, LearnerConfig, register_family

RUNS = ".runs"  # STORE/.runs/<family_id>/evaluations.json: the design points evaluated so far


class MapConfig(LearnerConfig):
    budget: Optional[int] = Field(None, ge=1, description="real evaluations of the design (default 2 (K+1)(K+2)/2, "
                                                          "at least (K+1)(K+2)/2: the surrogate's parameters)")
    c_max: float = Field(1.0, gt=0, description="the box [0, c_max]^K of task-arithmetic coefficients")
    metric: Metric = Field("accuracy", description="what the surrogates model: accuracy (through a sigmoid) or "
                                                   "mean cross-entropy (through a softplus)")
    design: Design = Field("sobol", description="the space-filling design (scipy.stats.qmc), beside the K one-hot and "
                                                "3 isotropic points")
    val_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "labelled validation data: this class-stratified fraction of each task's TRAIN split, held apart "
        "(never the test split, which stays for eval and front)"))
    val: dict[str, str] = Field({}, description="TASK=SPEC: the whole train split of SPEC as that task's validation "
                                                "data instead; repeatable")
    pick: Literal["weighted-sum", "tchebycheff"] = Field("weighted-sum", description=(
        "how a preference picks a member: the largest preference-weighted predicted metric (the paper's), or "
        "the smallest weighted Tchebycheff gap to the best predicted metric per task"))
    population: int = Field(100, ge=4, description="NSGA-III population (Das-Dennis reference directions)")
    generations: int = Field(200, ge=1, description="NSGA-III generations")
    eval_batch: int = Field(256, ge=1, description="validation images per forward pass")
    seed: int = 0


def validation_sets(ctx: LearnContext, config: MapConfig) -> dict:
    unknown = set(config.val) - set(ctx.zoo.tasks)
    if unknown:
        raise ValueError(f"--val names unknown tasks {sorted(unknown)}; tasks are {ctx.zoo.tasks}")
    pre = ctx.zoo.manifest.preprocess
    out = {}
    for task in ctx.zoo.tasks:
        if task in config.val:
            out[task] = load_dataset(config.val[task], "train", pre)
        else:
            spec = ctx.zoo.task(task).data
            if spec is None:
                raise ValueError(f"zoo task {task!r} records no dataset spec: give --val {task}=SPEC")
            out[task] = load_validation(spec, pre, config.val_fraction, config.seed)
    return out


def evaluate_design(evaluator: Evaluator, points: np.ndarray, path, resume: bool, progress: bool) -> list[Scores]:
    """Scores of every design point; each is saved when done, and a resume reads the saved ones."""
    done: list[Scores] = []
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if np.allclose(np.array(saved["points"]).reshape(-1, points.shape[1]), points[:len(saved["points"])]):
            done = [Scores(a, l) for a, l in zip(saved["accuracy"], saved["loss"])]
    bar = progress_bar(range(len(done), len(points)), initial=len(done), total=len(points), desc="map: evaluate",
                       disable=not progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in bar:
        done.append(evaluator(points[i]))
        write_text(path, json.dumps({"points": points[:len(done)].tolist(), "accuracy": [s.accuracy for s in done],
                                     "loss": [s.loss for s in done]}))
    return done


def normalised(c: np.ndarray) -> list[float]:
    """A member's `preference`: its coefficients normalised to the simplex (equal when all are 0)."""
    total = float(c.sum())
    return [float(x) / total for x in c] if total > 0 else [1.0 / len(c)] * len(c)


@register_family("map", MapConfig, "MAP: quadratic surrogates of the task-arithmetic coefficients' metrics and "
                 "their NSGA-III Pareto set, from labelled validation data (kind point-set)")
def learn(ctx: LearnContext, config: MapConfig):
    family_id = ctx.family_id("map", config)
    if (path := published(ctx, family_id)) is not None:
        return path
    began = time.perf_counter()
    tasks, k = ctx.zoo.tasks, len(ctx.zoo.tasks)
    points = design_points(k, config.budget or default_budget(k), config.c_max, config.design, config.seed)
    evaluator = Evaluator(ctx.pool, validation_sets(ctx, config), ctx.device, config.eval_batch)
    scores = evaluate_design(evaluator, points, ctx.store / RUNS / family_id / "evaluations.json", ctx.resume,
                             ctx.progress)
    fit_start = time.perf_counter()
    y = np.array([getattr(s, config.metric) for s in scores])  # [budget, K]
    surrogates = [fit_surrogate(points, y[:, j], config.metric) for j in range(k)]
    search_start = time.perf_counter()
    front, predicted = predicted_pareto_set(surrogates, config.c_max, config.population, config.generations,
                                            config.seed)
    search_end = time.perf_counter()
    real = [evaluator(c) for c in progress_bar(front, desc="map: evaluate the front", disable=not ctx.progress)]
    members = [Member(preference=normalised(c), coefficients=[float(x) for x in c], predicted=p.tolist(),
                      metrics={f"{name}.{t}": v for name, values in (("real_accuracy", r.accuracy), ("real_loss", r.loss))
                               for t, v in zip(tasks, values)})
               for c, p, r in zip(front, predicted, real)]
    seconds = evaluator.seconds
    metrics = {"evaluations": {"design": len(points), "front": len(front)},
               "surrogates": {t: {"r2": round(s.r2, 5), "loo_rmse": round(s.loo_rmse, 5)} for t, s in zip(tasks, surrogates)},
               "seconds_by_stage": {"merge": round(seconds.merge, 3), "evaluate": round(seconds.evaluate, 3),
                                    "fit": round(search_start - fit_start, 3),
                                    "nsga3": round(search_end - search_start, 3)}}
    return publish_point_set(ctx, family_id, "map", config, members, {}, began, pick=config.pick,
                             sense="max" if config.metric == "accuracy" else "min", metrics=metrics)
