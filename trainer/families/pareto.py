"""Pareto Merging (seed 002) and PM++: kind lowrank, trained by trainer/pareto/train.py."""
from __future__ import annotations

from typing import Literal

from ..pareto.train import ParetoConfig, train_family
from .registry import LearnContext, register_family


class PlusConfig(ParetoConfig):
    method: Literal["pm++"] = "pm++"


class PlainConfig(ParetoConfig):
    method: Literal["pm"] = "pm"


def learn(ctx: LearnContext, config: ParetoConfig):
    return train_family(ctx.zoo, ctx.store, config, ctx.unlabeled, ctx.unlabeled_specs, ctx.device,
                        resume=ctx.resume, progress=ctx.progress)


register_family("pm", PlainConfig, "Pareto Merging: a base merge (--base, default TSV-M) plus a preference-"
                "conditioned low-rank update A (sum_k p_k G_k) B^T, one training for the whole simplex (kind lowrank)")(learn)
register_family("pm++", PlusConfig, "Pareto Merging on TIES-preprocessed task vectors (kind lowrank)")(learn)
