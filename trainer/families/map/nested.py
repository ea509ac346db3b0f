"""Nested MAP (seed 000): for many tasks, a tree of pairwise merges, each a 2-D MAP.

The tree is agglomerative: average linkage (scipy) on the cosine distance between task vectors,
so the most alike tasks merge first. A leaf is its task's fine-tuned model (c = e_k). A node
merges its two children's models a and b (coefficient vectors over all K task vectors) as

    theta0 + u_1 s_a sum_k a_k tau_k + u_2 s_b sum_k b_k tau_k,    u in [0, 1]^2,

s_a = c_max / max_k a_k, so that the merge stays in MAP's box [0, c_max]^K. Its two objectives
are the preference-weighted mean metric of each child's tasks (weights: the preference within
that child). The 2-D MAP (a design, 2 quadratic surrogates, NSGA-III) gives a predicted front in
u, from which the preference's split between the two children picks a point with MAP's pick rule.
The root's pick is the preference's model.

A node's 2-D MAP depends on the preference only through its children's models and the weights
within them, so each distinct one runs once (leaf pairs: once for every preference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from models_store.kinds.point_set import PICK_RULES, MemberTable

from .design import Design, design_points
from ...evaluate import StageTimer
from .search import surrogate_front
from .surrogate import Metric


@dataclass(frozen=True)
class Node:
    tasks: tuple[int, ...]  # task indices under this node, left child's first
    children: tuple["Node", ...] = ()

    def names(self, tasks: Sequence[str]):
        """The tree as nested lists of task names (a leaf: its name)."""
        return tasks[self.tasks[0]] if not self.children else [c.names(tasks) for c in self.children]


def task_tree(gram: np.ndarray) -> Node:
    """The agglomerative tree of K tasks from the Gram matrix of their task vectors [K, K]."""
    k = len(gram)
    leaves = [Node((i,)) for i in range(k)]
    if k < 2:
        raise ValueError(f"nested MAP merges tasks in pairs: it needs at least 2 tasks, the zoo has {k}")
    norms = np.sqrt(np.clip(np.diag(gram), 1e-30, None))
    distance = np.clip(1.0 - gram / np.outer(norms, norms), 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    nodes = list(leaves)
    for a, b, *_ in linkage(squareform(distance, checks=False), method="average"):
        left, right = nodes[int(a)], nodes[int(b)]
        nodes.append(Node(left.tasks + right.tasks, (left, right)))
    return nodes[-1]


def weights_within(pref: np.ndarray, tasks: Sequence[int]) -> np.ndarray:
    """The preference restricted to `tasks`, normalised (equal when it gives them nothing)."""
    w = pref[list(tasks)]
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


# points [n, K] and task indices -> that metric of each point on each of those tasks [n, len(tasks)]
Evaluate = Callable[[np.ndarray, Sequence[int]], np.ndarray]


@dataclass
class NestedSearch:
    evaluate: Evaluate
    metric: Metric
    budget: int  # design points of each pairwise MAP
    c_max: float
    design: Design
    population: int
    generations: int
    seed: int
    pick: str = "weighted-sum"
    timer: StageTimer = field(default_factory=StageTimer)
    fronts: dict = field(default_factory=dict)  # one predicted front per distinct pairwise problem

    def coefficients(self, node: Node, pref: np.ndarray) -> np.ndarray:
        """The model the tree gives the preference `pref` [K] at `node`: its coefficients [K]."""
        k = len(pref)
        if not node.children:
            return np.eye(k)[node.tasks[0]]
        left, right = node.children
        a, b = self.coefficients(left, pref), self.coefficients(right, pref)
        within = weights_within(pref, left.tasks), weights_within(pref, right.tasks)
        key = (node.tasks, *(np.round(v, 9).tobytes() for v in (a, b, *within)))
        if key not in self.fronts:
            self.fronts[key] = self._pair_front(node, a, b, *within)
        front, predicted = self.fronts[key]
        split = weights_within(pref, node.tasks)
        split = np.array([split[:len(left.tasks)].sum(), split[len(left.tasks):].sum()])
        oriented = predicted if self.metric == "accuracy" else -predicted
        table = MemberTable(torch.zeros(len(front), 2), torch.as_tensor(oriented, dtype=torch.float32))
        return front[int(PICK_RULES[self.pick](torch.as_tensor(split)[None], table)[0])]

    def _pair_front(self, node: Node, a: np.ndarray, b: np.ndarray, w_left: np.ndarray,
                    w_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 2-D MAP of merging a and b: the predicted front's coefficients [M, K] and metrics [M, 2]."""
        scale = np.array([self.c_max / (v.max() if v.max() > 0 else 1.0) for v in (a, b)])

        def coefficients(u: np.ndarray) -> np.ndarray:
            return u[:, :1] * scale[0] * a + u[:, 1:] * scale[1] * b

        u = design_points(2, self.budget, 1.0, self.design, self.seed)
        measured = self.evaluate(coefficients(u), node.tasks)  # [n, |left| + |right|]
        split = len(w_left)
        y = np.stack([measured[:, :split] @ w_left, measured[:, split:] @ w_right], axis=1)
        _, front, predicted = surrogate_front(u, y, self.metric, 1.0, self.population, self.generations, self.seed,
                                              self.timer, leave_one_out=False)
        return coefficients(front), predicted
