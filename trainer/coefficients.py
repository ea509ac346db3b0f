"""Task-arithmetic coefficient vectors c in the box [0, c_max]^K (theta0 + sum_k c_k tau_k), shared by
MAP (its design and members) and the front (direct search): where space-filling points lie, and the
preference a vector stands for. Their evaluator is trainer/evaluate.py's CoefficientEvaluator."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.stats import qmc

SEARCH_BOX = "search_box"  # where a family's metrics hold it


class SearchBox(BaseModel):
    """Where a learner searched its members (MAP's): task-arithmetic coefficients c in [0, c_max]^K,
    found with `real_evaluations` evaluations of real merges, drawn with `seed`: the budget a peer
    gets for a fair comparison (`pmerge front`'s direct search). Kept in the family's metrics."""
    model_config = ConfigDict(extra="forbid")
    c_max: float = Field(gt=0)
    real_evaluations: float = Field(ge=0)
    seed: int = 0

    def metrics(self) -> dict[str, Any]:
        return {SEARCH_BOX: self.model_dump()}

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> Optional["SearchBox"]:
        """The box a family's metrics hold, or None (none, or not one)."""
        try:
            return cls.model_validate(metrics[SEARCH_BOX]) if SEARCH_BOX in metrics else None
        except ValidationError:
            return None


def sobol(k: int, n: int, c_max: float, seed: int) -> np.ndarray:
    """The first n of 2^m scrambled Sobol points in [0, c_max]^K (its balance wants whole powers of two)."""
    if n <= 0:
        return np.empty((0, k))
    return c_max * qmc.Sobol(k, scramble=True, seed=seed).random_base2(int(np.ceil(np.log2(n))))[:n]


def normalised(c: np.ndarray) -> list[float]:
    """The preference a coefficient vector stands for: c normalised to the simplex (equal when all are 0)."""
    total = float(c.sum())
    return [float(x) / total for x in c] if total > 0 else [1.0 / len(c)] * len(c)
