"""Sets of preferences on the simplex: the grid, its anchors, Dirichlet samples.

Everything returns canonical `Preference`s (models_store.preference), de-duplicated by their
canonical text and in a stable order, so the same arguments give the same set on every machine.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
from pydantic import Field

from .flags import KeyValueModel
from .preference import Preference, equal_preference, from_weights

PRIORITY = 0.7  # the "priority" preference of the quality bar: 0.7 on one task, the rest spread evenly


def simplex_grid(tasks: Sequence[str], divisions: int) -> list[Preference]:
    """Every vector of multiples of 1/N summing to 1 (vertices included): C(N+K-1, K-1) points."""
    if divisions < 1:
        raise ValueError(f"the simplex grid needs at least 1 division, got {divisions}")
    k = len(tasks)
    out = []
    # stars and bars: K-1 bar positions among N+K-1 slots
    for bars in combinations(range(divisions + k - 1), k - 1):
        edges = (-1, *bars, divisions + k - 1)
        counts = [edges[i + 1] - edges[i] - 1 for i in range(k)]
        out.append(from_weights([c / divisions for c in counts], tasks))
    return sorted(out, key=lambda p: p.weights, reverse=True)  # the first task's vertex first


def vertices(tasks: Sequence[str]) -> list[Preference]:
    return [from_weights([float(i == j) for j in range(len(tasks))], tasks) for i in range(len(tasks))]


def priority_preference(tasks: Sequence[str], task: str, weight: float = PRIORITY) -> Preference:
    """`weight` on `task`, the rest spread evenly over the other tasks."""
    k = len(tasks)
    if k == 1:
        return from_weights([1.0], tasks)
    rest = (1.0 - weight) / (k - 1)
    return from_weights([weight if t == task else rest for t in tasks], tasks)


def anchors(tasks: Sequence[str]) -> list[Preference]:
    """The points every report compares: the equal preference, then 0.7 on each task."""
    return unique([equal_preference(tasks), *(priority_preference(tasks, t) for t in tasks)])


def dirichlet_samples(tasks: Sequence[str], count: int, seed: int, alpha: float = 1.0) -> list[Preference]:
    """`count` draws from Dirichlet(alpha 1) (alpha = 1: uniform on the simplex)."""
    if count < 0:
        raise ValueError(f"the number of random preferences must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    return [from_weights(list(w), tasks) for w in rng.dirichlet([alpha] * len(tasks), size=count)]


def unique(prefs: Iterable[Preference]) -> list[Preference]:
    """First occurrence of each canonical preference, order kept."""
    seen: dict[str, Preference] = {}
    for p in prefs:
        seen.setdefault(p.canonical, p)
    return list(seen.values())


class PointSet(KeyValueModel):
    """The preferences a report evaluates and a point-set learner makes members for: the simplex grid
    with N divisions (vertices included), the anchors, and M Dirichlet(1) draws. As text (a flag):
    `grid=3,random=5,seed=0`, any of the three."""
    grid: int = Field(3, ge=1, description="simplex grid divisions N (K=4, N=3: 20 points)")
    random: int = Field(5, ge=0, description="extra Dirichlet(1) preferences")
    seed: int = 0

    def preferences(self, tasks: Sequence[str]) -> list[Preference]:
        return unique([*simplex_grid(tasks, self.grid), *anchors(tasks), *dirichlet_samples(tasks, self.random, self.seed)])


def selection_candidates(tasks: Sequence[str], samples: int, seed: int) -> list[Preference]:
    """What `select` tries for an unseen task (Pareto Merging, section 4.3): the equal preference,
    the vertices, then `samples` seeded Dirichlet(1) draws."""
    return unique([equal_preference(tasks), *vertices(tasks), *dirichlet_samples(tasks, samples, seed)])
