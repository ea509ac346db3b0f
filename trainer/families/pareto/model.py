"""The Pareto Merging model (paper eq. 6), per adapted weight matrix P:

    theta(pref)[P] = theta0[P] + sum_k lambda[P, k] tau_k[P] + A_P (sum_k pref_k G_P[k]) B_P^T

lambda: AdaMerging's layer-wise coefficients (one per tensor per task, init 0.3, clamped to
[0, 1]), trained with the rest; or, with a fixed base (TSV-M, Iso-C, ...), that merge in place of
theta0 + sum_k lambda tau_k, left alone by training. A [d_out, r], B [d_in, r], G [K, r, r]. Tensors without a low-rank term get only the base
merge. Two initialisations of (A, B, G), both starting training at AdaMerging's starting point at
the equal preference:
  kaiming       the paper's: A and B Kaiming-uniform, G zero (so every preference starts equal);
  task-vectors  ours (the default): the rank-r part of task arithmetic + preference's steering,
                see `task_vector_factors`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from models_store.checkpoint import StateDict
from models_store.kinds.lowrank import LowRank, lowrank_delta

from ...methods.adamerging import LayerwiseMerge
from ...pool import TaskVector

LowRankInit = Literal["task-vectors", "kaiming"]
class FixedBase(torch.nn.Module):
    """A base merge that training leaves alone: its tensors, on the device (no parameters)."""

    def __init__(self, merged: StateDict, device: torch.device):
        super().__init__()
        self.merged = {k: v.to(device) for k, v in merged.items()}

    def forward(self) -> StateDict:
        return dict(self.merged)

    def clamp_(self) -> None:
        pass


Base = LayerwiseMerge | FixedBase


class ParetoMerge(torch.nn.Module):
    def __init__(self, base: Base, vectors: dict[str, TaskVector], targets: list[str], rank: int,
                 init: float, lowrank_init: LowRankInit, generator: torch.Generator, device: torch.device):
        super().__init__()
        self.base = base
        self.targets = targets
        self.A = torch.nn.ParameterList()
        self.B = torch.nn.ParameterList()
        self.G = torch.nn.ParameterList()
        for name in targets:
            stacked = torch.stack([v[name] for v in vectors.values()]).to(device)
            if rank > min(stacked.shape[1:]):
                raise ValueError(f"rank {rank} exceeds the smaller side of {name} {tuple(stacked.shape[1:])}")
            if lowrank_init == "task-vectors":
                a, b, g = task_vector_factors(stacked, rank, init)
            else:
                a, b, g = kaiming_factors(stacked, rank, generator)
            for factors, tensor in ((self.A, a), (self.B, b), (self.G, g)):
                factors.append(torch.nn.Parameter(tensor.to(device)))

    def forward(self, pref: torch.Tensor) -> StateDict:
        state = self.base()
        for name, a, b, g in zip(self.targets, self.A, self.B, self.G):
            state[name] = state[name] + lowrank_delta(a, b, g, pref)
        return state

    def lowrank_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.A, *self.B, *self.G]

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


def task_vector_factors(stacked: torch.Tensor, rank: int, init: float) -> tuple[torch.Tensor, ...]:
    """(A, B, G) from one parameter's task vectors `stacked` [K, d_out, d_in].

    A and B: orthonormal bases of the top-r column and row spaces the K task vectors share: the
    top-r eigenvectors of sum_k tau_k tau_k^T and of sum_k tau_k^T tau_k (the singular vectors of
    the vectors side by side, at a sixth of the SVD's time on ViT-B/32); G_k = K init A^T (tau_k -
    mean tau) B. Then
        A (sum_k pref_k G_k) B^T = P_r(sum_k K init pref_k tau_k - init sum_k tau_k),
    the rank-r projection of what task arithmetic + preference (lambda_k = K init pref_k, the
    preference-aware baseline) adds to the equal merge: zero at the equal preference, that
    baseline's steering elsewhere. Why: from the paper's init (G zero, A and B random) the entropy
    objective barely separates the preferences on the demo zoo (bench/results/pm-sweep-*, rows
    "kaiming"); it keeps and refines the steering once the steering is there.
    """
    k = stacked.shape[0]
    taus = stacked.float()
    u = top_eigenvectors(torch.einsum("koi,kpi->op", taus, taus), rank)
    v = top_eigenvectors(torch.einsum("koi,koj->ij", taus, taus), rank)
    g = k * init * torch.einsum("or,koi,is->krs", u, taus - taus.mean(0), v)
    return u.contiguous(), v.contiguous(), g


def top_eigenvectors(symmetric: torch.Tensor, rank: int) -> torch.Tensor:
    """The eigenvectors of the `rank` largest eigenvalues, largest first."""
    return torch.linalg.eigh(symmetric).eigenvectors[:, -rank:].flip(1)


def kaiming_factors(stacked: torch.Tensor, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The paper's (A, B, G): A and B Kaiming-uniform, G zero."""
    k, d_out, d_in = stacked.shape
    return kaiming_uniform(d_out, rank, generator), kaiming_uniform(d_in, rank, generator), torch.zeros(k, rank, rank)


def kaiming_uniform(dim: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """A [dim, rank] factor as `torch.nn.init.kaiming_uniform_(a=sqrt(5))` draws a [dim, rank]
    tensor (nn.Linear's init): U(+-1/sqrt(rank)), fan-in = the rank. (Fan-in = the model dimension
    made A G B^T d/r times smaller; with the ||G|| penalty G then stayed near zero and the
    preference steered nothing.)"""
    bound = 1.0 / math.sqrt(rank)
    return torch.empty(dim, rank).uniform_(-bound, bound, generator=generator)
