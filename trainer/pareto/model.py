"""The Pareto Merging model (paper eq. 6), per adapted weight matrix P:

    theta(pref)[P] = theta0[P] + sum_k lambda[P, k] tau_k[P] + A_P (sum_k pref_k G_P[k]) B_P^T

lambda: AdaMerging's layer-wise coefficients (one per tensor per task, init 0.3, clamped to
[0, 1]); A [d_out, r] and B [d_in, r] Kaiming-uniform (the paper's init); G [K, r, r] zero, so
training starts at AdaMerging's starting point. Tensors without a low-rank term get only the base
merge.
"""
from __future__ import annotations

import math

import torch

from models_store.checkpoint import StateDict
from models_store.family import LowRank

from ..methods.adamerging import LayerwiseMerge
from ..pool import TaskVector

TARGET_SUFFIXES = {"in_proj": "attn.in_proj_weight", "out_proj": "attn.out_proj.weight"}


def target_names(keys: list[str], which: list[str]) -> list[str]:
    """The adapted parameters: every block's attention projections named by `which`."""
    unknown = set(which) - set(TARGET_SUFFIXES)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGET_SUFFIXES)}")
    suffixes = tuple(TARGET_SUFFIXES[w] for w in which)
    names = [k for k in keys if k.endswith(suffixes)]
    if not names:
        raise ValueError(f"no parameter of this tower ends with {suffixes}")
    return names


class ParetoMerge(torch.nn.Module):
    def __init__(self, pretrained: StateDict, vectors: dict[str, TaskVector], targets: list[str], rank: int,
                 init: float, generator: torch.Generator, device: torch.device):
        super().__init__()
        self.base = LayerwiseMerge(pretrained, vectors, init, device)
        self.targets = targets
        k = len(vectors)
        self.A = torch.nn.ParameterList()
        self.B = torch.nn.ParameterList()
        self.G = torch.nn.ParameterList()
        for name in targets:
            d_out, d_in = pretrained[name].shape
            self.A.append(torch.nn.Parameter(kaiming_uniform(d_out, rank, generator).to(device)))
            self.B.append(torch.nn.Parameter(kaiming_uniform(d_in, rank, generator).to(device)))
            self.G.append(torch.nn.Parameter(torch.zeros(k, rank, rank, device=device)))

    def forward(self, pref: torch.Tensor) -> StateDict:
        state = self.base()
        for name, a, b, g in zip(self.targets, self.A, self.B, self.G):
            state[name] = state[name] + a @ torch.einsum("k,kij->ij", pref, g) @ b.T
        return state

    def tensor_norm(self) -> torch.Tensor:
        """Sum over adapted layers of ||G||_F^2 (the paper's tensor-norm regulariser)."""
        return sum(g.pow(2).sum() for g in self.G)

    def clamp_(self) -> None:
        self.base.clamp_()

    @torch.no_grad()
    def export(self, dtypes: dict[str, torch.dtype]) -> tuple[StateDict, dict[str, LowRank]]:
        """(base state dict, low-rank factors) on the CPU: the family's two weight files."""
        base = {k: v.detach().cpu().to(dtypes[k]).contiguous() for k, v in self.base().items()}
        lowrank = {n: LowRank(a.detach().cpu().clone(), b.detach().cpu().clone(), g.detach().cpu().clone())
                   for n, a, b, g in zip(self.targets, self.A, self.B, self.G)}
        return base, lowrank


def kaiming_uniform(dim: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """A [dim, rank] factor as `torch.nn.init.kaiming_uniform_(a=sqrt(5))` draws a [dim, rank]
    tensor (nn.Linear's init): U(+-1/sqrt(rank)), fan-in = the rank. (Fan-in = the model dimension
    made A G B^T d/r times smaller; with the ||G|| penalty G then stayed near zero and the
    preference steered nothing.)"""
    bound = 1.0 / math.sqrt(rank)
    return torch.empty(dim, rank).uniform_(-bound, bound, generator=generator)
