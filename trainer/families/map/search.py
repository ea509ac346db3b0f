"""MAP's search: the K-objective problem on the surrogates, solved by pymoo's NSGA-III with
Das-Dennis reference directions, in the box that was sampled ([0, c_max]^K; the public code
searched [-3, 3] while every sample lay in [0, 1])."""
from __future__ import annotations


import numpy as np
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.problem import Problem
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions

from ...evaluate import StageTimer
from .surrogate import Metric, Surrogate, fit_surrogate


class SurrogateProblem(Problem):
    """Minimise -accuracy_t(c) (or loss_t(c)) for every task t at once."""

    def __init__(self, surrogates: list[Surrogate], c_max: float):
        k = len(surrogates)
        super().__init__(n_var=k, n_obj=k, xl=np.zeros(k), xu=np.full(k, c_max))
        self.surrogates = surrogates

    def _evaluate(self, x, out, *args, **kwargs):
        predicted = np.stack([s.predict(x) for s in self.surrogates], axis=1)
        out["F"] = -predicted if self.surrogates[0].metric == "accuracy" else predicted


def reference_directions(k: int, population: int) -> np.ndarray:
    """Das-Dennis directions: the most partitions whose count fits the population (at least 1)."""
    partitions = 1
    while len(get_reference_directions("das-dennis", k, n_partitions=partitions + 1)) <= population:
        partitions += 1
    return get_reference_directions("das-dennis", k, n_partitions=partitions)


def predicted_pareto_set(surrogates: list[Surrogate], c_max: float, population: int, generations: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [M, K], predicted metrics [M, K]) of the non-dominated solutions, unique, sorted."""
    directions = reference_directions(len(surrogates), population)
    algorithm = NSGA3(ref_dirs=directions, pop_size=max(population, len(directions)))
    result = minimize(SurrogateProblem(surrogates, c_max), algorithm, ("n_gen", generations), seed=seed,
                      verbose=False)
    c = np.unique(np.clip(np.atleast_2d(result.X), 0.0, c_max).round(6), axis=0)
    predicted = np.stack([s.predict(c) for s in surrogates], axis=1)
    return c, predicted


def fit_surrogates(points: np.ndarray, y: np.ndarray, metric: Metric, leave_one_out: bool = True) -> list[Surrogate]:
    """One surrogate per objective: y [n, K] measured at points [n, K]."""
    return [fit_surrogate(points, y[:, j], metric, leave_one_out) for j in range(y.shape[1])]


def surrogate_front(points: np.ndarray, y: np.ndarray, metric: Metric, c_max: float, population: int,
                    generations: int, seed: int, timer: StageTimer, leave_one_out: bool = True):
    """MAP's core from evaluations y [n, K] at points [n, K]: the surrogates, then their predicted
    Pareto set (coefficients [M, K], predicted metrics [M, K]); the stages' time goes to `timer`."""
    with timer.stage("fit"):
        surrogates = fit_surrogates(points, y, metric, leave_one_out)
    with timer.stage("nsga3"):
        front, predicted = predicted_pareto_set(surrogates, c_max, population, generations, seed)
    return surrogates, front, predicted
