"""Pareto Merging (seed 002) and PM++: kind lowrank, trained by train.py."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import register_family
from .train import DEFAULT_BASE, BaseName, ParetoConfig, learn


def base_field(method: str):
    """The method's default base, with the base flag's description (its help then says both)."""
    return Field(DEFAULT_BASE[method], description=ParetoConfig.model_fields["base"].description)


class PlusConfig(ParetoConfig):
    method: Literal["pm++"] = "pm++"
    base: BaseName = base_field("pm++")


class PlainConfig(ParetoConfig):
    method: Literal["pm"] = "pm"
    base: BaseName = base_field("pm")


register_family("pm", PlainConfig, "Pareto Merging: a base merge (--base, default TSV-M) plus a preference-"
                "conditioned low-rank update A (sum_k p_k G_k) B^T, one training for the whole simplex (kind lowrank)")(learn)
register_family("pm++", PlusConfig, "Pareto Merging on TIES-preprocessed task vectors (kind lowrank)")(learn)
