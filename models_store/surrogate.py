"""MAP's surrogate of each task's metric as a function of the task-arithmetic coefficients c, and
the member it makes for a preference: the one definition for the learner that fits the surrogates
(trainer/families/map/) and the point-set kind that serves them (kinds/point_set.py).

    accuracy_t(c) ~ sigmoid(phi(c) . w_t)        loss_t(c) ~ softplus(phi(c) . w_t)
    phi(c) = [1, c_1..c_K, c_i c_j (i <= j)]     ((K + 1)(K + 2) / 2 features)

For a preference p the member's coefficients solve, over the box [0, c_max]^K, MAP's
scalarisation of the predicted metrics (s_t = the metric oriented so that higher is better):

    weighted-sum    max_c  sum_t p_t s_t(c)
    tchebycheff     min_c  max_t p_t (z_t - s_t(c)),   z_t = max over the box of s_t (the ideal point)

a K-dimensional problem (scipy: L-BFGS-B; SLSQP on the epigraph for Tchebycheff), started from the
given points best under the same objective (the family's members), so the answer is never worse,
as predicted, than the best of them.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

Metric = Literal["accuracy", "loss"]
Scalarisation = Literal["weighted-sum", "tchebycheff"]
STARTS = 3  # the best starting points the solver refines


def feature_count(k: int) -> int:
    return (k + 1) * (k + 2) // 2


def quadratic_features(c: np.ndarray) -> np.ndarray:
    """[n, K] -> [n, (K + 1)(K + 2) / 2]."""
    c = np.atleast_2d(c)
    i, j = np.triu_indices(c.shape[1])
    return np.hstack([np.ones((len(c), 1)), c, c[:, i] * c[:, j]])


def quadratic_jacobian(c: np.ndarray) -> np.ndarray:
    """d phi(c) / dc for one point c [K] -> [(K + 1)(K + 2) / 2, K]."""
    k = len(c)
    i, j = np.triu_indices(k)
    jac = np.zeros((feature_count(k), k))
    jac[1:k + 1] = np.eye(k)
    rows = np.arange(k + 1, feature_count(k))
    np.add.at(jac, (rows, i), c[j])
    np.add.at(jac, (rows, j), c[i])
    return jac


def link(z: np.ndarray, metric: Metric) -> np.ndarray:
    return expit(z) if metric == "accuracy" else np.logaddexp(0.0, z)


def link_slope(z: np.ndarray, metric: Metric) -> np.ndarray:
    s = expit(z)
    return s * (1.0 - s) if metric == "accuracy" else s


class Surrogates:
    """Every task's surrogate: weights [T, (K + 1)(K + 2) / 2] over the box [0, c_max]^K."""

    def __init__(self, weights: np.ndarray, metric: Metric, c_max: float):
        self.weights, self.metric, self.c_max = np.asarray(weights, dtype=np.float64), metric, float(c_max)
        self.k = self.weights.shape[0]
        self.sign = 1.0 if metric == "accuracy" else -1.0
        self._ideal: np.ndarray | None = None

    def predict(self, c: np.ndarray) -> np.ndarray:
        """[n, K] -> the predicted metrics [n, T]."""
        return link(quadratic_features(c) @ self.weights.T, self.metric)

    def scores(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """s(c) [T] (higher is better) and ds/dc [T, K] at one point c [K]."""
        z = quadratic_features(c)[0] @ self.weights.T
        slope = link_slope(z, self.metric)[:, None] * (self.weights @ quadratic_jacobian(c))
        return self.sign * link(z, self.metric), self.sign * slope

    def _bounds(self) -> list[tuple[float, float]]:
        return [(0.0, self.c_max)] * self.k

    def ideal(self) -> np.ndarray:
        """z_t: the largest s_t over the box, per task (solved once)."""
        if self._ideal is None:
            best = []
            for t in range(self.k):
                starts = [np.full(self.k, self.c_max / 2), np.eye(self.k)[t] * self.c_max]
                runs = [minimize(lambda c: tuple(-v for v in self._task(c, t)), x0, jac=True, method="L-BFGS-B",
                                 bounds=self._bounds()) for x0 in starts]
                best.append(max(-r.fun for r in runs))
            self._ideal = np.array(best)
        return self._ideal

    def _task(self, c: np.ndarray, t: int) -> tuple[float, np.ndarray]:
        s, ds = self.scores(c)
        return float(s[t]), ds[t]

    def objective(self, c: np.ndarray, pref: np.ndarray, scalarisation: Scalarisation) -> np.ndarray:
        """The scalarisation to minimise at points c [n, K] -> [n]."""
        s = self.sign * self.predict(c)
        if scalarisation == "weighted-sum":
            return -(s @ pref)
        return np.max(pref * (self.ideal() - s), axis=1)

    def best_coefficients(self, pref: np.ndarray, scalarisation: Scalarisation, starts: np.ndarray) -> np.ndarray:
        """The coefficients [K] that the scalarisation picks for preference `pref` [K] (module docstring),
        refined from the best STARTS of `starts` [n, K]."""
        pref = np.asarray(pref, dtype=np.float64)
        starts = np.clip(np.vstack([np.atleast_2d(starts), np.full(self.k, self.c_max / 2)]), 0.0, self.c_max)
        values = self.objective(starts, pref, scalarisation)
        best_x, best_v = starts[np.argmin(values)], float(np.min(values))
        for x0 in starts[np.argsort(values, kind="stable")[:STARTS]]:
            x = self._refine(x0, pref, scalarisation)
            v = float(self.objective(x[None], pref, scalarisation)[0])
            if v < best_v - 1e-12:
                best_x, best_v = x, v
        return best_x

    def _refine(self, x0: np.ndarray, pref: np.ndarray, scalarisation: Scalarisation) -> np.ndarray:
        if scalarisation == "weighted-sum":
            def f(c):
                s, ds = self.scores(c)
                return -float(s @ pref), -(pref @ ds)
            return np.clip(minimize(f, x0, jac=True, method="L-BFGS-B", bounds=self._bounds()).x, 0.0, self.c_max)
        ideal, k = self.ideal(), self.k
        # epigraph: min u over (c, u) with u >= p_t (z_t - s_t(c)) for every t
        constraint = {"type": "ineq",
                      "fun": lambda x: x[k] - pref * (ideal - self.scores(x[:k])[0]),
                      "jac": lambda x: np.hstack([pref[:, None] * self.scores(x[:k])[1], np.ones((k, 1))])}
        u0 = float(np.max(pref * (ideal - self.scores(x0)[0])))
        result = minimize(lambda x: (x[k], np.eye(k + 1)[k]), np.append(x0, u0), jac=True, method="SLSQP",
                          bounds=self._bounds() + [(None, None)], constraints=[constraint])
        return np.clip(result.x[:k], 0.0, self.c_max)
