"""Kind `lowrank` (Pareto Merging, PM++): a base tower plus a preference-conditioned low-rank update.

Files: `base.safetensors` (the merged base tower) and `lowrank.safetensors` ("P.A" [d_out, r],
"P.B" [d_in, r], "P.G" [K, r, r] per adapted P). kind_params: `rank`, `targets`.

    theta(pref)[P] = base[P] + A_P (sum_k pref_k G_P[k]) B_P^T   for every adapted P,
    theta(pref)[P] = base[P]                                     otherwise.

A variant is the canonical weights of a preference. Serving never materialises weights: every
adapted projection computes

    y = x W^T + b + ((x B) M_i^T) A^T,     M_i = sum_k pref_ik G_k   (r x r, one per image)

which equals x (W + A M_i B^T)^T + b, i.e. the merged weights theta(pref_i), exactly. A and B
are shared by every preference, so a mixed batch costs two thin GEMMs and one tiny batched
matmul per projection on top of the base forward (docs/serving.md).

open_clip's nn.MultiheadAttention cannot take a per-image update, so attention is written here
with the very same parameters (`attn.in_proj_weight`, `attn.in_proj_bias`, `attn.out_proj.*`);
everything else (embeddings, ln/ls/mlp, pooling, proj) is the tower's own code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from pydantic import BaseModel, Field, field_validator
from torch import nn

from .. import StoreError
from ..checkpoint import StateDict, load_state_dict
from ..tower import check_tower_state, embed, load_tower, pool_project
from ..zoo import Head
from .base import KindFormat, Servable, Weights, cast_bytes

NAME = "lowrank"
BASE = "base.safetensors"
LOWRANK = "lowrank.safetensors"
FILES = (BASE, LOWRANK)


# The parameters a low-rank family may adapt, by short name: the one definition that the trainer
# (which ones it trains), the manifest (which ones a family may name) and the service (which
# ones its forward applies) share, so the trainer cannot publish what the service refuses.
TARGETS = {"in_proj": "attn.in_proj_weight", "out_proj": "attn.out_proj.weight"}
_TARGET = re.compile(r"^transformer\.resblocks\.(\d+)\.(" + "|".join(map(re.escape, TARGETS.values())) + r")$")


def parse_target(name: str) -> Optional[tuple[int, str]]:
    """`transformer.resblocks.3.attn.in_proj_weight` -> (3, "in_proj"); None for any other parameter."""
    m = _TARGET.match(name)
    if m is None:
        return None
    return int(m.group(1)), next(short for short, suffix in TARGETS.items() if suffix == m.group(2))


def target_names(keys: list[str], which: list[str]) -> list[str]:
    """The adapted parameters of a tower with these keys: every block's projections named by `which`."""
    unknown = set(which) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    names = [k for k in keys if (t := parse_target(k)) is not None and t[1] in which]
    if not names:
        wanted = " or ".join(TARGETS[w] for w in which)
        raise ValueError(f"no parameter of this tower is a transformer block's {wanted}")
    return names


def mix(pref: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """M = sum_k pref_k G_k: pref [K] -> [r, r], or [N, K] -> [N, r, r] (one per image)."""
    return torch.einsum("...k,kij->...ij", pref.to(G.dtype), G)


def lowrank_delta(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """A (sum_k pref_k G_k) B^T: the one implementation of the update, for trainer and downloads."""
    return A @ mix(pref, G) @ B.T


@dataclass(frozen=True)
class LowRank:
    """One adapted parameter's factors: A [d_out, r], B [d_in, r], G [K, r, r]."""
    A: torch.Tensor
    B: torch.Tensor
    G: torch.Tensor

    def delta(self, pref: torch.Tensor) -> torch.Tensor:
        return lowrank_delta(self.A, self.B, self.G, pref)

    def to(self, device: torch.device, dtype: Optional[torch.dtype] = None) -> "LowRank":
        return LowRank(*(t.to(device, dtype) for t in (self.A, self.B, self.G)))


def lowrank_to_state(lowrank: dict[str, LowRank]) -> StateDict:
    out: StateDict = {}
    for name, f in lowrank.items():
        out |= {f"{name}.A": f.A, f"{name}.B": f.B, f"{name}.G": f.G}
    return out


def lowrank_from_state(state: StateDict, targets: list[str]) -> dict[str, LowRank]:
    missing = [f"{t}.{x}" for t in targets for x in "ABG" if f"{t}.{x}" not in state]
    if missing:
        raise StoreError(f"{LOWRANK} lacks tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return {t: LowRank(state[f"{t}.A"], state[f"{t}.B"], state[f"{t}.G"]) for t in targets}


class UnsupportedTower(ValueError):
    """The tower or the family's targets are outside what this forward implements."""


def check_supported(tower: VisionTransformer) -> None:
    """Refuse towers whose blocks or attention differ from open_clip's default ViT block."""
    if not isinstance(tower, VisionTransformer):
        raise UnsupportedTower(f"expected an open_clip VisionTransformer, got {type(tower).__name__}")
    if not tower.transformer.batch_first:
        raise UnsupportedTower("only batch-first transformers are supported")
    for i, block in enumerate(tower.transformer.resblocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            raise UnsupportedTower(f"block {i} is a {type(block).__name__}; only open_clip's default "
                                   "ResidualAttentionBlock (no qk-norm, scaled-cosine or cross attention) is supported")
        attn = block.attn
        if not (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.batch_first
                and attn.bias_k is None and not attn.add_zero_attn):
            raise UnsupportedTower(f"block {i}: attention is not a plain batch-first nn.MultiheadAttention")


def block_targets(lowrank: dict[str, LowRank], n_blocks: int) -> list[dict[str, int]]:
    """Per block, {projection short name: its index in `lowrank`'s order}; other targets are refused."""
    blocks: list[dict[str, int]] = [{} for _ in range(n_blocks)]
    for index, name in enumerate(lowrank):
        target = parse_target(name)
        if target is None or target[0] >= n_blocks:
            raise UnsupportedTower(f"cannot serve a low-rank update of {name!r}: only "
                                   f"transformer.resblocks.<i>.{' / '.join(TARGETS.values())} of its blocks")
        blocks[target[0]][target[1]] = index
    return blocks


def lowrank_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   f: Optional[LowRank], cores: Optional[torch.Tensor]) -> torch.Tensor:
    """x [N, L, d_in] -> x W^T + b + (x B) (A M_i)^T with one core M_i [r, r] per image (cores [N, r, r]):
    one thin GEMM for every image, then one batched GEMM that adds each image's update in place."""
    y = F.linear(x, weight, bias)
    if f is None:
        return y
    am = torch.einsum("or,nrs->nso", f.A, cores)  # (A M_i)^T, [N, r, d_out]
    return torch.baddbmm(y, x @ f.B, am)


class LowRankServable(Servable):
    """A base tower plus low-rank factors: one forward in which every image has its own preference,
    with nothing materialised."""

    def __init__(self, tower: VisionTransformer, lowrank: dict[str, LowRank], heads: dict[str, Head],
                 device: torch.device, dtype: torch.dtype, graphs: bool = False):
        check_supported(tower)
        super().__init__(heads, device, dtype, graphs)
        self.tower = tower.to(device=self.device, dtype=dtype).eval()
        self.factors = [f.to(self.device, dtype) for f in lowrank.values()]
        self.blocks = block_targets(lowrank, len(tower.transformer.resblocks))
        # every adapted projection's G, stacked: one einsum gives every core of the batch
        self.G = torch.stack([f.G for f in self.factors]) if self.factors else None  # [P, K, r, r]

    def plan(self, variants: Sequence[Weights]) -> torch.Tensor:
        """Each image's weights [N, K], on the host."""
        return torch.tensor(variants, dtype=torch.float32)

    def features(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        return self.run("mixed", self.mixed_features, images, plan.to(self.device, non_blocking=True))

    def mixed_features(self, images: torch.Tensor, prefs: torch.Tensor) -> torch.Tensor:
        cores = None if self.G is None else torch.einsum("nk,pkij->pnij", prefs.to(self.dtype), self.G)
        x = embed(self.tower, images)
        for block, slots in zip(self.tower.transformer.resblocks, self.blocks):
            # ResidualAttentionBlock.forward with our attention
            x = x + block.ls_1(self._attention(block.attn, block.ln_1(x), slots, cores))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return pool_project(self.tower, x).float()

    def _projection(self, slots: dict[str, int], name: str, cores: Optional[torch.Tensor]):
        index = slots.get(name)
        return (None, None) if index is None or cores is None else (self.factors[index], cores[index])

    def _attention(self, attn: nn.MultiheadAttention, x: torch.Tensor, slots: dict[str, int],
                   cores: Optional[torch.Tensor]) -> torch.Tensor:
        n, length, d = x.shape
        heads = attn.num_heads
        qkv = lowrank_linear(x, attn.in_proj_weight, attn.in_proj_bias, *self._projection(slots, "in_proj", cores))
        q, k, v = qkv.view(n, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x [N, H, L, hd]
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, d)
        return lowrank_linear(o, attn.out_proj.weight, attn.out_proj.bias,
                              *self._projection(slots, "out_proj", cores))


class LowRankParams(BaseModel):
    """kind_params of a low-rank family."""
    rank: int = Field(ge=0)
    targets: list[str]

    @field_validator("targets")
    @classmethod
    def _servable_targets(cls, targets: list[str]) -> list[str]:
        refused = [t for t in targets if parse_target(t) is None]
        if refused:
            raise ValueError(f"cannot adapt {refused[0]!r}: a low-rank family adapts only "
                             f"transformer.resblocks.<i>.{' / '.join(TARGETS.values())}")
        return targets


def family_files(base: StateDict, lowrank: dict[str, LowRank]) -> dict[str, StateDict]:
    """The files `publish_family` writes for this kind."""
    return {BASE: base, LOWRANK: lowrank_to_state(lowrank)}


class LowRankFamily(KindFormat):
    """A loaded low-rank family: its tensors, theta(pref), and its servable."""

    name = NAME
    files = FILES
    Params = LowRankParams

    def __init__(self, base: StateDict, lowrank: dict[str, LowRank], params: LowRankParams, tasks: int,
                 architecture: dict, family_id: str):
        self.base, self.lowrank, self.architecture = base, lowrank, architecture
        for name, f in lowrank.items():
            if name not in base:
                raise StoreError(f"family {family_id}: target {name} is not a base parameter")
            w, r = base[name], params.rank
            if f.A.shape != (w.shape[0], r) or f.B.shape != (w.shape[1], r) or f.G.shape != (tasks, r, r):
                raise StoreError(f"family {family_id}: factors of {name} have shapes "
                                 f"{tuple(f.A.shape)}, {tuple(f.B.shape)}, {tuple(f.G.shape)}; "
                                 f"expected ({w.shape[0]}, {r}), ({w.shape[1]}, {r}), ({tasks}, {r}, {r})")

    @classmethod
    def load(cls, path: Path, params: LowRankParams, tasks: list[str], architecture: dict,
             family_id: str) -> "LowRankFamily":
        lowrank = lowrank_from_state(load_state_dict(path / LOWRANK), params.targets)
        base = load_state_dict(path / BASE)
        check_tower_state(base, architecture, f"family {family_id}: {BASE}")
        return cls(base, lowrank, params, len(tasks), architecture, family_id)

    def tower_specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(k, v.dtype, tuple(v.shape)) for k, v in self.base.items()]

    def materialize(self, variant: Weights, device: torch.device = torch.device("cpu")
                    ) -> Iterator[tuple[str, torch.Tensor]]:
        """theta(pref) lazily, one tensor at a time on `device`, so a writer holds at most one extra tensor."""
        pref = torch.tensor(variant, dtype=torch.float32, device=device)
        for name, w in self.base.items():
            f = self.lowrank.get(name)
            w = w.to(device)
            yield name, w if f is None else (w.float() + f.to(device).delta(pref)).to(w.dtype)

    def resident_bytes(self, dtype: torch.dtype, stored: dict[str, int]) -> dict[str, int]:
        factors = {f"{n}.{part}": t for n, f in self.lowrank.items() for part, t in zip("ABG", (f.A, f.B, f.G))}
        return {BASE: cast_bytes(self.base, dtype), LOWRANK: cast_bytes(factors, dtype)}  # both in the serving dtype

    def servable(self, heads: dict[str, Head], device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, graphs: bool = False) -> LowRankServable:
        # exact per image in one forward: nothing is materialised, so nothing is cached
        return LowRankServable(load_tower(self.architecture, self.base), self.lowrank, heads, device, dtype, graphs)
