"""Kind `point-set` (preference-aware baselines, MAP, HM3): finitely many members, each a merged
tower made for one preference, and a pick rule that maps any preference to one member.

Files: `pretrained.safetensors` (theta0, the zoo's tower), `task_vectors.safetensors`
("<task>/<param>" = tau_task[param] = finetuned - pretrained for every float parameter; with
`merge_vectors`, also "merge/<task>/<param>" = v_task[param], the vectors that the members' merges
combine, e.g. HM3's DARE-TIES-processed task vectors; dense in the zoo's dtype, or quantised to
`vector_bits`, as models_store/task_tensors.py says) and `coefficients.safetensors`
("<member>/<param>" [K], only for per-tensor members).
kind_params: `pick` (a rule of PICK_RULES), `merge_vectors` (bool), `vector_bits` (32: dense, the
default of a family that does not say; 2, 4 or 8) and `members`, each

    preference    [K] the preference it was made for (task order, sums to 1)
    coefficients  [K] task-level lambda, or null when `per_tensor` (then coefficients.safetensors)
    blocks        null, or one source per transformer block: "merge", "finetuned:<task>" or "skip"
    metrics       what its method measured or predicted (MAP's predicted accuracies, say)

    theta_m[P] = theta0[P] + sum_k lambda_m[P, k] v_k[P]     (lambda_m[P] = coefficients or per tensor;
                                                              v = the merge vectors, or tau without them)

except in a block whose source is "finetuned:<task>" (theta0 + tau_task: that task's fine-tuned
block) or "skip": the member's merge with the block's residual branches zeroed (attention
`out_proj` and `mlp.c_proj`, weight and bias), so the block is the identity and the member, as a
download writes it, is still a plain open_clip tower of the family's depth.

With `at_preference` (a rule), the family makes a member for every preference asked instead of
picking one of its members: `task-arithmetic` (c = scale K p, task arithmetic + preference) or
`surrogate` (MAP: the coefficients that its surrogates' scalarisation picks, models_store/surrogate.py).
The coefficients made for a preference are rounded to COEFFICIENT_DECIMALS, and a download applies
the same rule, so it is the tower that was served.
The stored members stay what the learner made and measured (`pmerge front` draws them).

A variant is a stored member's index, or (`at_preference`) the tuple of coefficients made for a
preference, rounded to COEFFICIENT_DECIMALS: preferences whose coefficients round alike share one
tower, in the device cache and in the download cache. The family is served by the kinds' generic
servable (kinds/base.py, VariantServable): one plain tower per variant of a batch, a member's
skipped blocks left out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Literal, Optional, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..surrogate import Metric, Scalarisation, Surrogates, feature_count
from ..task_tensors import DENSE, Bits, TaskTensors, stored_tensors
from ..tower import check_tower_state, task_arithmetic
from .base import KindFormat

NAME = "point-set"
PRETRAINED = "pretrained.safetensors"
TASK_VECTORS = "task_vectors.safetensors"
MERGE_PREFIX = "merge/"  # the merge vectors' keys in TASK_VECTORS
COEFFICIENTS = "coefficients.safetensors"
FILES = (PRETRAINED, TASK_VECTORS, COEFFICIENTS)

MERGE, SKIP, FINETUNED = "merge", "skip", "finetuned:"
# the residual branches' output projections: zero, and a pre-norm block adds nothing to its input
SKIPPED = ("attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class MemberTable:
    """What pick rules read: every member's preference [M, K] and, where the method predicted
    them, its per-task metrics [M, K] oriented so that higher is better (None otherwise)."""
    preferences: torch.Tensor
    scores: Optional[torch.Tensor]


def nearest(prefs: torch.Tensor, table: MemberTable) -> torch.Tensor:
    """prefs [N, K] -> [N] the member whose preference is nearest (Euclidean; ties: the first)."""
    return torch.cdist(prefs.float(), table.preferences.float()).argmin(dim=1)


def predicted(table: MemberTable) -> torch.Tensor:
    """The members' predicted metrics, which the rules that read them require (PointSetParams checks)."""
    if table.scores is None:
        raise StoreError("this pick rule reads every member's `predicted` metrics; the family has none")
    return table.scores


def weighted_sum(prefs: torch.Tensor, table: MemberTable) -> torch.Tensor:
    """The member that maximises sum_k pref_k score_k (MAP's rule)."""
    return (prefs.float() @ predicted(table).T).argmax(dim=1)


def tchebycheff(prefs: torch.Tensor, table: MemberTable) -> torch.Tensor:
    """The member that minimises max_k pref_k (best_k - score_k), best_k the members' best on task k."""
    scores = predicted(table)
    gaps = scores.max(dim=0).values - scores  # [M, K], >= 0
    return (prefs.float()[:, None, :] * gaps[None]).amax(dim=2).argmin(dim=1)


# pick rules by name, as a manifest's `pick` names them; the last two need every member's `predicted`
PICK_RULES: dict[str, Callable[[torch.Tensor, MemberTable], torch.Tensor]] = {
    "nearest": nearest, "weighted-sum": weighted_sum, "tchebycheff": tchebycheff}
NEEDS_PREDICTED = {"weighted-sum", "tchebycheff"}


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preference: list[float] = Field(description="the preference this member was made for, in task order")
    coefficients: Optional[list[float]] = Field(None, description="task-level lambda [K]")
    per_tensor: bool = Field(False, description=f"lambda per parameter, in {COEFFICIENTS}")
    blocks: Optional[list[str]] = Field(None, description="per transformer block: merge, finetuned:<task> or skip")
    predicted: Optional[list[float]] = Field(None, description="[K] the method's prediction of the member's "
                                                                "per-task metric (MAP's surrogates)")
    metrics: dict[str, float] = {}

    @model_validator(mode="after")
    def _one_kind_of_coefficients(self) -> "Member":
        if (self.coefficients is None) == (not self.per_tensor):
            raise ValueError("a member has either task-level `coefficients` or `per_tensor: true`, not both or neither")
        return self


COEFFICIENT_DECIMALS = 3

# a stored member (its index), or the task-level coefficients of a member made for a preference
MemberKey = Union[int, tuple[float, ...]]


class TaskArithmeticRule(BaseModel):
    """c(p) = scale K p: task arithmetic + preference (the ta-pref learner's members, at any p)."""
    model_config = ConfigDict(extra="forbid")
    rule: Literal["task-arithmetic"] = "task-arithmetic"
    scale: float = Field(ge=0, description="s in theta0 + s sum_k K p_k tau_k")

    def coefficients(self, pref: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.scale * len(pref) * pref


class SurrogateRule(BaseModel):
    """c(p) = the coefficients that MAP's surrogates' scalarisation picks for p (models_store/surrogate.py)."""
    model_config = ConfigDict(extra="forbid")
    rule: Literal["surrogate"] = "surrogate"
    metric: Metric
    scalarisation: Scalarisation
    c_max: float = Field(gt=0, description="the box [0, c_max]^K the surrogates were fitted in")
    weights: list[list[float]] = Field(description="[K, (K + 1)(K + 2) / 2]: each task's quadratic surrogate")

    _surrogates: Optional[Surrogates] = PrivateAttr(None)

    def coefficients(self, pref: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return self.surrogates.best_coefficients(pref, self.scalarisation, starts)

    @property
    def surrogates(self) -> Surrogates:
        if self._surrogates is None:  # built once: it remembers the ideal point
            self._surrogates = Surrogates(np.array(self.weights), self.metric, self.c_max)
        return self._surrogates


MemberRule = Annotated[Union[TaskArithmeticRule, SurrogateRule], Field(discriminator="rule")]


def made_coefficients(rule: "TaskArithmeticRule | SurrogateRule", weights: tuple[float, ...],
                      starts: np.ndarray) -> tuple[float, ...]:
    """The coefficients `rule` makes for canonical weights, rounded: a made member's variant."""
    c = rule.coefficients(np.array(weights, dtype=np.float64), starts)
    return tuple(round(float(x), COEFFICIENT_DECIMALS) + 0.0 for x in c)


class PointSetParams(BaseModel):
    """kind_params of a point-set family."""
    model_config = ConfigDict(extra="forbid")
    pick: str = "nearest"
    at_preference: Optional[MemberRule] = Field(None, description=(
        "make a member for every preference asked by this rule, instead of picking a stored member"))
    merge_vectors: bool = Field(False, description=(
        f"the members' merges combine the {MERGE_PREFIX}<task>/<param> vectors of {TASK_VECTORS} (a preprocessing "
        "of the task vectors, HM3's DARE-TIES) instead of the task vectors; finetuned:<task> blocks still use tau"))
    vector_bits: Bits = Field(DENSE, description=f"bits per parameter of the vectors in {TASK_VECTORS}: 32 dense, "
                                                 "else quantised group-wise")
    sense: Literal["max", "min"] = Field("max", description="whether higher `predicted` metrics are better")
    members: list[Member] = Field(min_length=1)

    @field_validator("pick")
    @classmethod
    def _known_rule(cls, rule: str) -> str:
        if rule not in PICK_RULES:
            raise ValueError(f"unknown pick rule {rule!r} (this pmerge knows {', '.join(PICK_RULES)})")
        return rule

    @model_validator(mode="after")
    def _predictions_for_the_rule(self) -> "PointSetParams":
        if self.pick in NEEDS_PREDICTED and any(m.predicted is None for m in self.members):
            raise ValueError(f"pick rule {self.pick!r} reads every member's `predicted` metrics; some have none")
        return self


def block_of(name: str) -> Optional[tuple[int, str]]:
    m = _BLOCK.match(name)
    return None if m is None else (int(m.group(1)), m.group(2))


class Members:
    """The members' weights from theta0 and the task vectors, one tensor at a time, on one device."""

    def __init__(self, pretrained: StateDict, vectors: TaskTensors, params: PointSetParams,
                 per_tensor: dict[int, dict[str, torch.Tensor]], tasks: list[str],
                 merge_vectors: Optional[TaskTensors] = None, table: Optional[MemberTable] = None):
        self.pretrained, self.vectors, self.params, self.per_tensor, self.tasks = pretrained, vectors, params, per_tensor, tasks
        self.merge_vectors = vectors if merge_vectors is None else merge_vectors
        if table is None:  # on the host, always: picking is host work
            predicted = [m.predicted for m in params.members]
            scores = None if None in predicted else torch.tensor(predicted) * (1 if params.sense == "max" else -1)
            table = MemberTable(torch.tensor([m.preference for m in params.members]), scores)
        self.table = table
        # a solve's starting points: the stored members' coefficients
        self.starts = np.array([m.coefficients for m in params.members if m.coefficients is not None]
                               ).reshape(-1, len(tasks))

    def to(self, device: torch.device) -> "Members":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        vectors = self.vectors.to(device)
        merge_vectors = vectors if self.merge_vectors is self.vectors else self.merge_vectors.to(device)
        return Members(move(self.pretrained), vectors, self.params, {i: move(c) for i, c in self.per_tensor.items()},
                       self.tasks, merge_vectors, self.table)

    def pick(self, prefs: torch.Tensor) -> torch.Tensor:
        """prefs [N, K] -> [N] the stored member that the pick rule chooses."""
        return PICK_RULES[self.params.pick](prefs.cpu(), self.table)

    def key(self, weights: tuple[float, ...]) -> MemberKey:
        """The member serving canonical weights: one made for them (`at_preference`), or a stored one."""
        rule = self.params.at_preference
        if rule is None:
            return int(self.pick(torch.tensor([weights]))[0])
        return made_coefficients(rule, weights, self.starts)

    def source(self, key: MemberKey, name: str) -> str:
        """Where member `key` takes parameter `name` from: merge, finetuned:<task> or skip."""
        if isinstance(key, tuple):
            return MERGE
        blocks, block = self.params.members[key].blocks, block_of(name)
        return MERGE if blocks is None or block is None else blocks[block[0]]

    def kept_blocks(self, key: MemberKey) -> Optional[list[int]]:
        """The blocks member `key` runs, or None when it skips none."""
        blocks = None if isinstance(key, tuple) else self.params.members[key].blocks
        if blocks is None or SKIP not in blocks:
            return None
        return [b for b, s in enumerate(blocks) if s != SKIP]

    def coefficients(self, key: MemberKey, name: str) -> torch.Tensor:
        """lambda of member `key` for parameter `name`, [K] float32, over the vectors `tensor` combines."""
        if isinstance(key, tuple):
            return torch.tensor(key)
        member, source = self.params.members[key], self.source(key, name)
        if source.startswith(FINETUNED):
            return torch.nn.functional.one_hot(torch.tensor(self.tasks.index(source[len(FINETUNED):])),
                                               len(self.tasks)).float()
        if member.per_tensor:
            return self.per_tensor[key][name].float()
        return torch.tensor(member.coefficients)

    def tensor(self, index: MemberKey, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
        """theta_member[name], in theta0's dtype, computed on `device` (default: where the tensors are)."""
        w = self.pretrained[name].to(device)
        if name not in self.vectors:  # not a float parameter: never merged
            return w
        source, block = self.source(index, name), block_of(name)
        if source == SKIP and block is not None and block[1] in SKIPPED:
            return torch.zeros_like(w)
        basis = self.vectors if source.startswith(FINETUNED) else self.merge_vectors
        return task_arithmetic(w, self.coefficients(index, name), basis.stacked(name, w.device))



def family_files(pretrained: StateDict, task_vectors: dict[str, dict[str, torch.Tensor]],
                 per_tensor: dict[int, dict[str, torch.Tensor]] | None = None,
                 merge_vectors: dict[str, dict[str, torch.Tensor]] | None = None,
                 vector_bits: int = DENSE) -> dict[str, StateDict]:
    """The files `publish_family` writes for this kind: task_vectors {task: {param: tau}} (and the
    merge vectors, same layout, for a family with `merge_vectors`) are stored in theta0's dtype or
    quantised to `vector_bits`; per_tensor {member index: {param: lambda [K]}} for per-tensor members."""
    vectors = {key: v for prefix, sets in (("", task_vectors), (MERGE_PREFIX, merge_vectors or {}))
               for t, tv in sets.items() for key, v in stored_tensors(prefix, t, tv, pretrained, vector_bits).items()}
    coefficients = {f"{i}/{k}": c.float() for i, cs in (per_tensor or {}).items() for k, c in cs.items()}
    return {PRETRAINED: pretrained, TASK_VECTORS: vectors, COEFFICIENTS: coefficients}


class PointSetFamily(KindFormat):
    """A loaded point-set family: theta0, the task vectors, the members; theta(pref) and the servable."""

    name = NAME
    files = FILES
    Params = PointSetParams

    def __init__(self, members: Members, architecture: dict, family_id: str):
        self.member_weights, self.architecture = members, architecture
        # a surrogate's solve takes milliseconds: callers resolve new preferences in a thread
        self.slow_resolution = isinstance(members.params.at_preference, SurrogateRule)
        tasks, k = members.tasks, len(members.tasks)
        for kind, vectors in (("vector", members.vectors), ("merge vector", members.merge_vectors)):
            bad = vectors.problem(members.pretrained, k)
            if bad is not None:
                raise StoreError(f"family {family_id}: {TASK_VECTORS} lacks or misshapes some task's {kind} of {bad}")
        n_blocks = 1 + max((b[0] for p in members.pretrained if (b := block_of(p))), default=-1)
        for i, m in enumerate(members.params.members):
            where = f"family {family_id}: member {i}"
            if any(v is not None and len(v) != k for v in (m.preference, m.coefficients, m.predicted)):
                raise StoreError(f"{where} has {len(m.preference)} preference weights, {len(m.coefficients or [])} "
                                 f"coefficients and {len(m.predicted or [])} predictions; the family has {k} tasks")
            if m.per_tensor:
                lacking = [p for p in members.vectors if p not in members.per_tensor.get(i, {})]
                wrong = [p for p, c in members.per_tensor.get(i, {}).items() if c.shape != (k,)]
                if lacking or wrong:
                    raise StoreError(f"{where}: {COEFFICIENTS} lacks or misshapes {(lacking or wrong)[0]} ([{k}])")
            if m.blocks is not None:
                self._check_blocks(where, m.blocks, n_blocks, tasks)
        rule = members.params.at_preference
        if isinstance(rule, SurrogateRule) and np.shape(rule.weights) != (k, feature_count(k)):
            raise StoreError(f"family {family_id}: its surrogates' weights are {list(np.shape(rule.weights))}; "
                             f"{k} tasks need [{k}, {feature_count(k)}]")

    def _check_blocks(self, where: str, blocks: list[str], n_blocks: int, tasks: list[str]) -> None:
        if len(blocks) != n_blocks:
            raise StoreError(f"{where} names {len(blocks)} block sources; the tower has {n_blocks} blocks")
        for b, source in enumerate(blocks):
            if source not in (MERGE, SKIP) and not (source.startswith(FINETUNED) and source[len(FINETUNED):] in tasks):
                raise StoreError(f"{where}: block {b}'s source {source!r} is not merge, skip or finetuned:<task>")
            if source == SKIP:
                absent = [s for s in SKIPPED if f"transformer.resblocks.{b}.{s}" not in self.member_weights.pretrained]
                if absent:
                    raise StoreError(f"{where}: cannot skip block {b}, it has no {absent[0]}")

    @classmethod
    def load(cls, path: Path, params: PointSetParams, tasks: list[str], architecture: dict,
             family_id: str) -> "PointSetFamily":
        pretrained = load_state_dict(path / PRETRAINED)
        check_tower_state(pretrained, architecture, f"family {family_id}: {PRETRAINED}")
        stored = load_state_dict(path / TASK_VECTORS)
        vectors = TaskTensors.read(stored, pretrained, tasks, params.vector_bits)
        merge_vectors = TaskTensors.read(stored, pretrained, tasks, params.vector_bits, MERGE_PREFIX) \
            if params.merge_vectors else None
        del stored
        per_tensor: dict[int, dict[str, torch.Tensor]] = {}
        for key, c in load_state_dict(path / COEFFICIENTS).items():
            index, _, p = key.partition("/")
            per_tensor.setdefault(int(index), {})[p] = c
        return cls(Members(pretrained, vectors, params, per_tensor, tasks, merge_vectors), architecture, family_id)

    def tower_specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.member_weights.pretrained.items()]

    def variant(self, weights: tuple[float, ...]) -> MemberKey:
        return self.member_weights.key(weights)

    def describe(self, variant: MemberKey) -> dict:
        if isinstance(variant, tuple):
            return {"coefficients": list(variant)}
        return {"member": variant, "preference": self.member_weights.params.members[variant].preference}

    def kept_blocks(self, variant: MemberKey) -> Optional[list[int]]:
        return self.member_weights.kept_blocks(variant)

    def on_device(self, device: torch.device) -> "PointSetFamily":
        return self.moved(member_weights=self.member_weights.to(device))

    def members(self) -> list[dict]:
        """Each member's manifest entry; `predicted` only where higher is better (an accuracy, not a loss)."""
        params = self.member_weights.params
        return [m.model_dump(exclude_none=True, exclude=set() if params.sense == "max" else {"predicted"})
                for m in params.members]

    def materialize(self, variant: MemberKey, device: torch.device = torch.device("cpu")
                    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Stored member `variant`'s tower (or, given made coefficients, that member's), one tensor at a time."""
        index = variant
        for name in self.member_weights.pretrained:
            yield name, self.member_weights.tensor(index, name, device)
