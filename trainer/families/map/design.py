"""MAP's design: where the real evaluations go in the box [0, c_max]^K of task-arithmetic
coefficients. A space-filling design (scipy.stats.qmc: Sobol or Latin hypercube) plus the K
one-hot points (c_max on one task: its fine-tuned model when c_max = 1) and a few isotropic points
(every c_k equal, plain task arithmetic). Binary points alone cannot identify a quadratic's cross
terms (one of the public code's bugs at 8 tasks), so the space-filling part is always most of it."""
from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import qmc

from ...coefficients import sobol

Design = Literal["sobol", "lhs"]
ISOTROPIC = (0.15, 0.3, 0.5)  # c_k of the isotropic points (0.3: task arithmetic's usual scale)


def surrogate_size(k: int) -> int:
    """Parameters of a full quadratic in K variables: 1 + K + K (K + 1) / 2 = (K + 1)(K + 2) / 2."""
    return (k + 1) * (k + 2) // 2


def default_budget(k: int) -> int:
    """Twice the surrogate's parameters."""
    return 2 * surrogate_size(k)


def design_points(k: int, budget: int, c_max: float, design: Design, seed: int) -> np.ndarray:
    """[budget, K] coefficient vectors: one-hot, isotropic, then the space-filling rest."""
    minimum = surrogate_size(k)
    if budget < minimum:
        raise ValueError(f"a budget of {budget} evaluations cannot fit {k} quadratic surrogates of {minimum} "
                         f"parameters each: give --budget {minimum} or more (default {default_budget(k)})")
    fixed = [c_max * np.eye(k)[i] for i in range(k)] + [np.full(k, min(t, c_max)) for t in ISOTROPIC]
    rest = budget - len(fixed)
    if design == "sobol":
        filled = sobol(k, rest, c_max, seed)
    else:
        filled = c_max * qmc.LatinHypercube(k, seed=seed).random(max(rest, 0))
    return np.vstack([np.array(fixed)[:budget], filled])
