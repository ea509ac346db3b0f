"""Bayesian MAP's error-driven sampling (seed 000): after an initial design, rounds of new points
where the surrogates are least trustworthy. Each round bins ALL evaluated points by their direction
on the simplex (c / sum c, nearest of a few Das-Dennis directions; the public code scored the
initial points only), scores each bin by the surrogates' leave-one-out error there plus the spread
of bootstrap refits at its points, turns the scores into a softmax over the bins, and draws the
round's points from it, each near its bin's direction, inside the box."""
from __future__ import annotations

import numpy as np
from pymoo.util.ref_dirs import get_reference_directions

from .surrogate import Metric, Surrogate, fit_surrogate

BOOTSTRAPS = 16


def bin_directions(k: int) -> np.ndarray:
    """The vertices, the edge midpoints, ... : Das-Dennis with 2 partitions ((K+1)K/2 directions)."""
    return get_reference_directions("das-dennis", k, n_partitions=2)


def bins_of(c: np.ndarray, directions: np.ndarray) -> np.ndarray:
    total = c.sum(axis=1, keepdims=True)
    d = np.where(total > 0, c / np.where(total > 0, total, 1), 1.0 / c.shape[1])
    return np.argmin(((d[:, None, :] - directions[None]) ** 2).sum(-1), axis=1)


def bin_scores(c: np.ndarray, y: np.ndarray, surrogates: list[Surrogate], metric: Metric, directions: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """[B] mean |leave-one-out error| plus mean bootstrap spread of the bin's points (over tasks);
    an empty bin scores the highest, so it gets explored."""
    loo = np.abs(np.array([s.loo_errors for s in surrogates])).mean(axis=0)  # [n]
    spreads = []
    for j in range(len(surrogates)):
        preds = []
        for _ in range(BOOTSTRAPS):
            pick = rng.integers(0, len(c), len(c))
            preds.append(fit_surrogate(c[pick], y[pick, j], metric, leave_one_out=False).predict(c))
        spreads.append(np.std(preds, axis=0))
    per_point = loo + np.mean(spreads, axis=0)
    bins = bins_of(c, directions)
    scores = np.array([per_point[bins == b].mean() if np.any(bins == b) else np.nan for b in range(len(directions))])
    return np.where(np.isnan(scores), np.nanmax(scores) if np.any(~np.isnan(scores)) else 1.0, scores)


def allocate(scores: np.ndarray, count: int, rng: np.random.Generator, temperature: float) -> np.ndarray:
    """[B] new points per bin: `count` draws from softmax(scores / (temperature * mean score))."""
    z = scores / (temperature * max(float(scores.mean()), 1e-12))
    p = np.exp(z - z.max())
    return rng.multinomial(count, p / p.sum())


def sample_near(direction: np.ndarray, count: int, c_max: float, rng: np.random.Generator) -> np.ndarray:
    """`count` points whose direction is near `direction` (a Dirichlet around it), at a uniform scale
    that keeps every c_k in [0, c_max]."""
    d = rng.dirichlet(20 * direction + 0.5, size=count)
    scale = rng.uniform(0, c_max / d.max(axis=1))
    return d * scale[:, None]


def next_points(c: np.ndarray, y: np.ndarray, surrogates: list[Surrogate], metric: Metric, count: int, c_max: float,
                temperature: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the round's new points [count, K], the bins' scores)."""
    directions = bin_directions(c.shape[1])
    scores = bin_scores(c, y, surrogates, metric, directions, rng)
    per_bin = allocate(scores, count, rng, temperature)
    new = [sample_near(directions[b], n, c_max, rng) for b, n in enumerate(per_bin) if n]
    return np.vstack(new), scores
