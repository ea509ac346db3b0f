"""Preference-aware baselines (Pareto Merging paper, section 5): one convention for all of them.

A method's `preference` is a parsed `Preference` (models_store.preference, the one parser and
its one set of rules); its weights p (normalised, in the zoo's task order) become the per-task
weights w_k = K * p_k / sum_j p_j. The factor K makes the equal preference give w_k = 1, i.e.
exactly the plain method (the division keeps that exact after the parser's rounding to 1e-6).
No preference also gives w_k = 1.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional, Sequence

from pydantic import Field, InstanceOf, PlainSerializer

from models_store.preference import Preference

# only a parsed Preference: a raw list would skip the parser's checks; written as its canonical text
ParsedPreference = Annotated[Optional[InstanceOf[Preference]],
                              PlainSerializer(lambda p: None if p is None else p.canonical, return_type=Optional[str])]


def preference_field(what: str):
    return Field(None, description=f"a parsed preference over the zoo's tasks; {what} is weighted by "
                                   "K * pref_k (equal preference = the plain method)")


def task_weights(preference: Optional[Preference], tasks: Sequence[str]) -> list[float]:
    """w_k = K * p_k / sum(p); all 1 without a preference."""
    k = len(tasks)
    if preference is None:
        return [1.0] * k
    if list(preference.tasks) != list(tasks):
        raise ValueError(f"the preference is over tasks {', '.join(preference.tasks)}; the zoo's are {', '.join(tasks)}")
    total = math.fsum(preference.weights)
    return [k * p / total for p in preference.weights]
