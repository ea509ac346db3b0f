"""Pareto dominance and the exact hypervolume, for objectives to be maximised (accuracies).

The hypervolume of a point set is the volume of the union of the boxes [reference, p]. It is
computed exactly for any number of objectives by slicing along the last objective (HSO): between
two consecutive distinct values of it, the cross-section is the (K-1)-dimensional hypervolume of
the points that reach the upper one. Exponential in K, but fronts here have < 200 points and K is
a handful of tasks; two objectives use the O(n log n) sweep.
"""
from __future__ import annotations

from typing import Optional, Sequence

Point = tuple[float, ...]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[bool]:
    """For each point, whether no other point dominates it (duplicates do not dominate each other)."""
    return [not any(dominates(q, p) for q in points) for p in points]


def hypervolume(points: Sequence[Sequence[float]], reference: Optional[Sequence[float]] = None) -> float:
    """Volume dominated by `points` and bounded below by `reference` (default: the origin)."""
    pts = [tuple(float(x) for x in p) for p in points]
    if not pts:
        return 0.0
    k = len(pts[0])
    if any(len(p) != k for p in pts):
        raise ValueError("every point needs the same number of objectives")
    ref = tuple(float(r) for r in reference) if reference is not None else (0.0,) * k
    if len(ref) != k:
        raise ValueError(f"reference point has {len(ref)} objectives, points have {k}")
    # a point not beyond the reference in some objective bounds an empty box
    return _hv(_front([p for p in pts if all(x > r for x, r in zip(p, ref))]), ref)


def _front(pts: list[Point]) -> list[Point]:
    """The distinct non-dominated points (dominated ones add no volume)."""
    distinct = list(dict.fromkeys(pts))
    return [p for p, keep in zip(distinct, non_dominated(distinct)) if keep]


def _hv(pts: list[Point], ref: Point) -> float:
    if not pts:
        return 0.0
    if len(ref) == 1:
        return max(p[0] for p in pts) - ref[0]
    if len(ref) == 2:
        return _hv2(pts, ref)
    pts = sorted(pts, key=lambda p: p[-1], reverse=True)
    levels = sorted({p[-1] for p in pts}, reverse=True) + [ref[-1]]
    section: list[Point] = []
    volume, i = 0.0, 0
    for upper, lower in zip(levels, levels[1:]):
        while i < len(pts) and pts[i][-1] >= upper:  # the section only grows as the level falls
            section = _insert(section, pts[i][:-1])
            i += 1
        volume += (upper - lower) * _hv(section, ref[:-1])
    return volume


def _insert(front: list[Point], p: Point) -> list[Point]:
    """Add p to a non-dominated set, keeping it non-dominated."""
    if any(q == p or dominates(q, p) for q in front):
        return front
    return [q for q in front if not dominates(p, q)] + [p]


def _hv2(pts: list[Point], ref: Point) -> float:
    """Sweep by the first objective, descending: each point adds the strip above the best y so far."""
    volume, best_y = 0.0, ref[1]
    for x, y in sorted(pts, reverse=True):
        if y > best_y:
            volume += (x - ref[0]) * (y - best_y)
            best_y = y
    return volume
