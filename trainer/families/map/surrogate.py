"""MAP's surrogates (their form: models_store/surrogate.py): per task, a full quadratic in the
coefficients c through a link, fitted by nonlinear least squares (scipy.optimize.least_squares),
with the fit's R^2 and its leave-one-out error (each point predicted by the fit without it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.special import logit

from models_store.surrogate import Metric, link, quadratic_features


def unlink(y: np.ndarray, metric: Metric) -> np.ndarray:
    if metric == "accuracy":
        return logit(np.clip(y, 1e-3, 1 - 1e-3))
    y = np.maximum(y, 1e-6)
    return y + np.log(-np.expm1(-y))  # the inverse of softplus, stable for large y


@dataclass(frozen=True)
class Surrogate:
    weights: np.ndarray  # [(K + 1)(K + 2) / 2]
    metric: Metric
    r2: float = float("nan")
    loo_errors: tuple[float, ...] = ()  # per point: the fit without it, at it, minus the truth

    @property
    def loo_rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.loo_errors)))) if self.loo_errors else float("nan")

    def predict(self, c: np.ndarray) -> np.ndarray:
        return link(quadratic_features(c) @ self.weights, self.metric)


def _fit_weights(features: np.ndarray, y: np.ndarray, metric: Metric) -> np.ndarray:
    # start from the linear least-squares fit in the link's space, then fit where the metric lives
    start = np.linalg.lstsq(features, unlink(y, metric), rcond=None)[0]
    return least_squares(lambda w: link(features @ w, metric) - y, start, method="lm" if len(y) >= len(start)
                         else "trf").x


def fit_surrogate(c: np.ndarray, y: np.ndarray, metric: Metric, leave_one_out: bool = True) -> Surrogate:
    """One task's surrogate from its evaluations y [n] at the points c [n, K]."""
    features = quadratic_features(c)
    weights = _fit_weights(features, y, metric)
    if not leave_one_out:
        return Surrogate(weights, metric)
    fitted = link(features @ weights, metric)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - fitted) ** 2)) / total if total > 0 else 1.0
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        w = _fit_weights(features[keep], y[keep], metric)
        errors.append(float(link(features[i] @ w, metric) - y[i]))
    return Surrogate(weights, metric, r2, tuple(errors))
