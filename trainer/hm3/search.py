"""The two ways HM3's run spends its path evaluations: PPO on the policy, or uniformly random
paths (the ablation); then each member's path: the best of its start (every block from its merge),
the policy's greedy path and every path evaluated for it, so the search never makes a member worse
than its parameter-level merge on the validation objective."""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from ..progress import progress_bar
from .paths import Path, PathEvaluator
from .policy import PathPolicy, PPOConfig, ppo_update, sample


def ppo_search(evaluator: PathEvaluator, prefs: torch.Tensor, episodes: int, penalty: float, config: PPOConfig,
               seed: int, checkpoint: Callable[[], None], progress: bool) -> PathPolicy:
    """Episodes in batches of `config.batch`: a member drawn uniformly (its lambda), a path from the
    policy, its reward; one PPO update per batch."""
    torch.manual_seed(seed)
    m, k = prefs.shape
    policy = PathPolicy(k, evaluator.depth, len(evaluator.sources), config.hidden, config.prior)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    updates = -(-episodes // config.batch)
    for _ in progress_bar(range(updates), desc="hm3: PPO", disable=not progress):
        start = time.perf_counter()
        members = torch.randint(m, (config.batch,), generator=generator)
        paths, old_log_prob = sample(policy, prefs[members], generator)
        evaluator.seconds.policy += time.perf_counter() - start
        rewards = torch.empty(config.batch)
        for i in sorted(range(config.batch), key=lambda i: int(members[i])):  # fewer merges to load
            member = int(members[i])
            rewards[i] = evaluator(member, tuple(paths[i].tolist())).reward(prefs[member].tolist(), penalty)
        start = time.perf_counter()
        ppo_update(policy, optimizer, prefs[members], paths, old_log_prob, rewards, config)
        evaluator.seconds.policy += time.perf_counter() - start
        checkpoint()
    return policy


def random_search(evaluator: PathEvaluator, members: int, evaluations: int, seed: int,
                  checkpoint: Callable[[], None], progress: bool) -> None:
    """`evaluations` paths not evaluated before, uniformly random, the members in turn."""
    generator = torch.Generator().manual_seed(seed)
    sources, depth = len(evaluator.sources), evaluator.depth
    for e in progress_bar(range(evaluations), desc="hm3: random paths", disable=not progress):
        member = e % members
        if len(evaluator.seen(member)) >= sources ** depth:
            continue
        while True:
            path = tuple(torch.randint(sources, (depth,), generator=generator).tolist())
            if (member, path) not in evaluator.results:
                break
        evaluator(member, path)
        if (e + 1) % 64 == 0:
            checkpoint()
    checkpoint()


def choose_paths(evaluator: PathEvaluator, prefs: torch.Tensor, penalty: float,
                 policy: Optional[PathPolicy]) -> tuple[list[Path], list[Path]]:
    """Per member: its start and the best-rewarded of start, greedy path and paths evaluated (ties
    keep the earlier: the start first)."""
    start: Path = (0,) * evaluator.depth
    greedy = policy.greedy(prefs).tolist() if policy is not None else [None] * len(prefs)
    chosen = []
    for member, g in enumerate(greedy):
        pref = prefs[member].tolist()
        candidates = [start, *([tuple(g)] if g is not None else []), *evaluator.seen(member)]
        chosen.append(max(candidates, key=lambda p: evaluator(member, p).reward(pref, penalty)))
    return [start] * len(prefs), chosen
