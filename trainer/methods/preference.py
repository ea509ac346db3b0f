"""Preference-aware baselines (Pareto Merging paper, section 5): one convention for all of them.

A method's `preference` p (one weight per task, in the zoo's task order) becomes the per-task
weights w_k = K * p_k / sum_j p_j. Normalising makes `0.7,0.1,0.1,0.1` and `7,1,1,1` the same
preference; the factor K makes the equal preference give w_k = 1, i.e. exactly the plain method.
No preference also gives w_k = 1.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional, Sequence

from pydantic import AfterValidator, Field


def _on_simplex_cone(values: list[float]) -> list[float]:
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"preference values must be finite and >= 0, got {values}")
    if math.fsum(values) <= 0:
        raise ValueError("preference values sum to zero; at least one must be positive")
    return values


PreferenceWeights = Optional[Annotated[list[float], AfterValidator(_on_simplex_cone)]]


def preference_field(what: str):
    return Field(None, description=f"one weight per task in the zoo's order; {what} is weighted by "
                                   "K * pref_k / sum(pref) (equal preference = the plain method)")


def task_weights(preference: Optional[Sequence[float]], tasks: Sequence[str]) -> list[float]:
    """w_k = K * p_k / sum(p); all 1 without a preference."""
    k = len(tasks)
    if preference is None:
        return [1.0] * k
    if len(preference) != k:
        raise ValueError(f"preference has {len(preference)} values but the zoo has {k} tasks ({', '.join(tasks)})")
    total = math.fsum(preference)
    return [k * p / total for p in preference]
