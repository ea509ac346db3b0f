"""What the point-set learners share: their points, and publishing members as a point-set family."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models_store.kinds import point_set
from models_store.simplex import PointSet
from models_store.task_tensors import DENSE, Bits

from ..coefficients import SearchBox
from .registry import LearnContext, Learned, LearnerConfig


VECTOR_BITS = "bits per parameter of the task vectors the family stores: 32 dense; 8, 4 or 2 quantised group-wise"


class VectorsConfig(LearnerConfig):
    # dense by default where a learner records what it measured of its members: its search (MAP's
    # evaluations, HM3's paths) reads the dense vectors, so its metrics describe dense members
    vector_bits: Bits = Field(DENSE, description=VECTOR_BITS)


class PointsConfig(VectorsConfig):
    points: PointSet = Field(default_factory=PointSet, description=(
        "the members' preferences, as `pmerge front` chooses them: grid=N (simplex grid, vertices included), "
        "random=M (Dirichlet(1) draws), seed=S; the equal and the 0.7-on-one-task preferences always"))


def kind_params(pick: str, sense: Literal["max", "min"], members: list[point_set.Member], merge_vectors: bool,
                at_preference: point_set.MemberRule | None = None, vector_bits: int = DENSE) -> dict:
    """`merge_vectors`, `at_preference` and `vector_bits` only where set: a family without them reads
    in a pmerge from before them."""
    params = point_set.PointSetParams(pick=pick, sense=sense, members=members, merge_vectors=merge_vectors,
                                      at_preference=at_preference, vector_bits=vector_bits)
    return params.model_dump(exclude=({"merge_vectors"} if not merge_vectors else set())
                             | ({"at_preference"} if at_preference is None else set())
                             | ({"vector_bits"} if vector_bits == DENSE else set()))


def point_set_family(ctx: LearnContext, config: VectorsConfig, members: list[point_set.Member],
                     per_tensor: dict[int, dict[str, torch.Tensor]] | None = None, pick: str = "nearest",
                     sense: Literal["max", "min"] = "max", metrics: dict | None = None,
                     merge_vectors: dict[str, dict[str, torch.Tensor]] | None = None,
                     search: SearchBox | None = None, at_preference: point_set.MemberRule | None = None) -> Learned:
    """The members with the zoo's theta0 and task vectors (in its dtype, or quantised to the
    config's `vector_bits`): self-contained. With `merge_vectors` ({task: {param: v}}), the
    members' merges combine those instead; with `at_preference`, every preference is served by a
    member that rule makes for it."""
    pool, bits = ctx.pool, config.vector_bits
    return Learned(kind=point_set.NAME, kind_params=kind_params(pick, sense, members, merge_vectors is not None,
                                                                at_preference, bits),
                   files=point_set.family_files(pool.pretrained, pool.task_vectors, per_tensor or {}, merge_vectors,
                                                bits),
                   metrics={"members": len(members)} | (metrics or {}) | (search.metrics() if search else {}))
