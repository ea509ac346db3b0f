"""HM3 (seed 001; REFERENCE.md, "HM3") as a servable point-set family, adapted to towers that share
one architecture:

1. parameter level: DARE-TIES vectors v_k (trainer/hm3/dare_ties.py) and, per member preference
   lambda, the merge theta(lambda) = theta0 + alpha sum_k lambda_k v_k;
2. architecture level: per member, a path (one source per block: its merge, a fine-tuned model,
   or with --allow-skip no block) searched by a preference-conditioned policy trained with PPO
   (trainer/hm3/policy.py) on rewards measured on a fixed labelled validation subset
   (trainer/hm3/paths.py), or by random paths (--search random, the ablation), or not at all
   (--search none: the parameter level alone);
3. the family: one member per preference with its merge's coefficients and its path as `blocks`;
   a preference picks the nearest member (HM3's "the closest model on the front").

Every path evaluated is saved after each policy update, so a killed run resumes: the seeded
search replays, and what was evaluated is not evaluated again.
"""
from __future__ import annotations

import time
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from models_store.kinds.point_set import Member
from models_store.preference import Preference, equal_preference
from models_store.simplex import dirichlet_samples, unique, vertices

from ..point_set import VectorsConfig, point_set_family
from ..registry import LearnContext, register_family
from ..validation import ValidationConfig, validation_sets
from .dare_ties import dare_ties
from .paths import PathEvaluator, by_stage, load_results, save_results, validation_parts
from .policy import PPOConfig
from .search import choose_paths, ppo_search, random_search


class Hm3Config(ValidationConfig, VectorsConfig):
    id_exclude: ClassVar[frozenset[str]] = frozenset({"cache_mb"})
    members: int = Field(32, ge=1, description="member preferences: the K vertices, the equal preference, then "
                                               "Dirichlet(1) draws")
    drop: float = Field(0.5, ge=0, lt=1, description="DARE's drop rate p: each task vector entry dropped with "
                                                     "probability p, the rest rescaled by 1/(1-p)")
    trim: float = Field(100.0, gt=0, le=100, description="TIES after DARE: percent of each vector's entries kept by "
                                                         "magnitude (100: none trimmed), then the sign election")
    scale: float = Field(0.3, ge=0, description="s in theta0 + s sum_k K lambda_k v_k (HM3's alpha = K s; 0.3: task "
                                                "arithmetic's scale at the equal preference)")
    search: Literal["ppo", "random", "none"] = Field("ppo", description=(
        "the architecture level: PPO on a preference-conditioned policy, uniformly random paths (as many "
        "evaluations as --episodes), or none (the parameter level alone)"))
    episodes: int = Field(1024, ge=0, description="ppo: episodes (member, path, reward), in batches of the PPO "
                                                  "batch; random: paths evaluated")
    depth_penalty: float = Field(0.002, ge=0, description="reward = sum_k lambda_k acc_k - this x blocks run")
    allow_skip: bool = Field(False, description="a block may also be skipped (then it costs no time when served)")
    search_images: int = Field(128, ge=1, description="validation images per task (at most half of them), a fixed "
                                                      "subset on which every path is scored; the rest confirm")
    finalists: int = Field(4, ge=1, description="per member, the best paths of the search scored again on the "
                                                "confirmation images")
    confirm_margin: float = Field(1.0, ge=0, description="a finalist replaces the member's merge only if its reward "
                                                         "gain on the confirmation images exceeds this many standard "
                                                         "errors (paired per image)")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO's settings, as name=value,...")
    eval_batch: int = Field(256, ge=1, description="validation images per forward pass")
    cache_mb: int = Field(1024, ge=0, description="the cache of tokens after each path prefix (a path sharing its "
                                                  "first blocks with one seen runs only the rest)")


def member_preferences(tasks: list[str], count: int, seed: int) -> list[Preference]:
    """The vertices, the equal preference, then Dirichlet(1) draws until `count` distinct."""
    prefs = unique([*vertices(tasks), equal_preference(tasks)])[:count]
    draws = 0
    while len(prefs) < count:
        draws += count - len(prefs)
        prefs = unique([*prefs, *dirichlet_samples(tasks, draws, seed)])[:count]
    return prefs


@register_family("hm3", Hm3Config, "HM3: a preference-weighted DARE-TIES merge per member, then each block's "
                 "source (merge, a fine-tuned model, skip) chosen by a PPO-trained preference-conditioned policy "
                 "(kind point-set)")
def learn(ctx: LearnContext, config: Hm3Config):
    tasks, pool = ctx.zoo.tasks, ctx.pool
    start = time.perf_counter()
    vectors = dare_ties(pool.task_vectors, config.drop, config.trim, config.seed)
    dare_seconds = time.perf_counter() - start
    alpha = config.scale * len(tasks)
    prefs = member_preferences(tasks, config.members, config.seed)
    coefficients = [[alpha * w for w in p.weights] for p in prefs]
    val, confirm = validation_parts(validation_sets(ctx, config), config.search_images, config.seed)
    evaluator = PathEvaluator(pool, vectors, coefficients, val, config.allow_skip, ctx.device, config.eval_batch,
                              config.cache_mb << 20)
    evaluator.timer.seconds["merge"] = dare_seconds
    log = ctx.run_dir / "paths.json"
    resumed = load_results(evaluator, log) if ctx.resume else 0
    checkpoint = lambda: save_results(evaluator, log)  # noqa: E731
    weights = torch.tensor([p.weights for p in prefs], dtype=torch.float32)
    policy = None
    if config.search == "ppo" and config.episodes > 0:
        policy = ppo_search(evaluator, weights, config.episodes, config.depth_penalty, config.ppo, config.seed,
                            checkpoint, ctx.progress)
    elif config.search == "random":
        random_search(evaluator, len(prefs), config.episodes, config.seed, checkpoint, ctx.progress)
    confirmation = evaluator.on(confirm)
    starts, chosen = choose_paths(evaluator, confirmation, weights, config.depth_penalty, policy, config.finalists,
                                  config.confirm_margin)
    checkpoint()
    members, gains = [], []
    for i, (pref, c, s, p) in enumerate(zip(prefs, coefficients, starts, chosen)):
        before, after = evaluator(i, s), evaluator(i, p)
        confirmed_before, confirmed_after = confirmation(i, s), confirmation(i, p)
        gains.append(float(after.objective(pref.weights) - before.objective(pref.weights)))
        members.append(Member(preference=pref.weights, coefficients=c, blocks=[evaluator.sources[j] for j in p],
                              metrics={f"val_accuracy.{t}": a for t, a in zip(tasks, after.per_task)}
                              | {"val_objective": after.objective(pref.weights),
                                 "start_val_objective": before.objective(pref.weights),
                                 "confirm_objective": confirmed_after.objective(pref.weights),
                                 "start_confirm_objective": confirmed_before.objective(pref.weights),
                                 "blocks_run": after.blocks}))
    counts = evaluator.timer.counts
    metrics = {"search": config.search, "alpha": alpha, "path_evaluations": len(evaluator.results),
               "path_evaluations_resumed": resumed, "validation_images_per_task": {t: len(val[t].labels) for t in tasks},
               "confirmation_images_per_task": {t: len(confirm[t].labels) for t in tasks},
               "confirmation_evaluations": len(confirmation.results),
               "block_forwards": {"run": counts.get("blocks_run", 0), "needed": counts.get("blocks_needed", 0)},
               "members_changed": int(sum(s != p for s, p in zip(starts, chosen))),
               "mean_objective_gain": float(np.mean(gains)),
               "seconds_by_stage": by_stage(evaluator.timer)}
    return point_set_family(ctx, config, members, metrics=metrics, merge_vectors=vectors)
