"""The two ways HM3's run spends its path evaluations: PPO on the policy, or uniformly random
paths (the ablation); then each member's path: its start (every block from its merge) unless one
of the search's best paths for it, the policy's greedy path among them, also beats the start on
validation images the search never saw, so the search never makes a member worse than its
parameter-level merge on the validation objective and does not pick a path for the noise of the
search's images."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ...progress import progress_bar
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
        with evaluator.timer.stage("policy"):
            members = torch.randint(m, (config.batch,), generator=generator)
            paths, old_log_prob = sample(policy, prefs[members], generator)
        rewards = torch.empty(config.batch)
        for i in sorted(range(config.batch), key=lambda i: int(members[i])):  # fewer merges to load
            member = int(members[i])
            rewards[i] = evaluator(member, tuple(paths[i].tolist())).reward(prefs[member].tolist(), penalty)
        with evaluator.timer.stage("policy"):
            ppo_update(policy, optimizer, prefs[members], paths, old_log_prob, rewards, config)
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


def choose_paths(evaluator: PathEvaluator, confirmation: PathEvaluator, prefs: torch.Tensor, penalty: float,
                 policy: Optional[PathPolicy], finalists: int, margin: float) -> tuple[list[Path], list[Path]]:
    """Per member: its start (every block from its merge) and its chosen path. The finalists are the
    `finalists` best-rewarded of the greedy path and the paths evaluated for it that beat the start
    on the search part; the chosen one is the finalist whose reward gain over the start on the
    confirmation part, less `margin` standard errors of that gain, is largest and positive, or else
    the start (ties keep the earlier)."""
    start: Path = (0,) * evaluator.depth
    greedy = policy.greedy(prefs).tolist() if policy is not None else [None] * len(prefs)
    chosen = []
    for member, g in enumerate(greedy):
        pref = prefs[member].tolist()
        reward = lambda p: evaluator(member, p).reward(pref, penalty)  # noqa: E731
        candidates = dict.fromkeys([*([tuple(g)] if g is not None else []), *evaluator.seen(member)])
        better = sorted((p for p in candidates if reward(p) > reward(start)), key=reward, reverse=True)[:finalists]
        best, best_bound = start, 0.0
        for path in better:
            before, after = confirmation(member, start), confirmation(member, path)
            gain, error = after.gain_over(before, pref)
            bound = gain - penalty * (after.blocks - before.blocks) - margin * error
            if bound > best_bound:
                best, best_bound = path, bound
        chosen.append(best)
    return [start] * len(prefs), chosen
