"""Task-arithmetic coefficient vectors c in the box [0, c_max]^K (theta0 + sum_k c_k tau_k), shared by
MAP (its design and members) and the front (direct search): where space-filling points lie, and the
preference a vector stands for. Their evaluator is trainer/evaluate.py's CoefficientEvaluator."""
from __future__ import annotations

import numpy as np
from scipy.stats import qmc


def sobol(k: int, n: int, c_max: float, seed: int) -> np.ndarray:
    """The first n of 2^m scrambled Sobol points in [0, c_max]^K (its balance wants whole powers of two)."""
    if n <= 0:
        return np.empty((0, k))
    return c_max * qmc.Sobol(k, scramble=True, seed=seed).random_base2(int(np.ceil(np.log2(n))))[:n]


def normalised(c: np.ndarray) -> list[float]:
    """The preference a coefficient vector stands for: c normalised to the simplex (equal when all are 0)."""
    total = float(c.sum())
    return [float(x) / total for x in c] if total > 0 else [1.0 / len(c)] * len(c)
