"""K per-task tensors of a tower's float parameters (task vectors, anchored-map's targets), as a
family file stores them: dense, or quantised group-wise (models_store/quantize.py).

In the file, task t's tensor of parameter P is "<prefix><t>/<P>": dense, in the tower's dtype
(`bits` 32); or quantised to 2, 4 or 8 bits, its codes (uint8) there and its scales (float16) at
"<prefix><t>/<P>:scale". At 4 bits the K tensors cost K x 4.25 / 32 towers instead of K. Loaded,
they are stacked per parameter, [K, *shape] (dense) or codes [K, bytes] and scales [K, groups],
and a task's tensor is decoded in one elementwise pass on the device that asks for it.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

from .checkpoint import StateDict
from .quantize import dequantize, packed_size, quantize

DENSE: Literal[32] = 32
Bits = Literal[2, 4, 8, 32]
SCALE = ":scale"  # the suffix of a quantised tensor's scales


def stored_tensors(prefix: str, task: str, tensors: StateDict, tower: StateDict, bits: int) -> StateDict:
    """A file's entries for one task's tensors {P: tensor}: in the tower's dtype (dense), or
    quantised to `bits` (a learner streams the zoo through this, one task at a time)."""
    if bits == DENSE:
        return {f"{prefix}{task}/{p}": v.to(tower[p].dtype).contiguous() for p, v in tensors.items()}
    out = {}
    for p, v in tensors.items():
        codes, scales = quantize(v, bits)
        out[f"{prefix}{task}/{p}"], out[f"{prefix}{task}/{p}{SCALE}"] = codes, scales
    return out


class TaskTensors:
    """Every task's tensor of each parameter, stacked over the K tasks: dense ([K, *shape] per P)
    or quantised (codes [K, bytes] and scales [K, groups] per P)."""

    def __init__(self, tensors: dict[str, torch.Tensor], scales: dict[str, torch.Tensor],
                 shapes: dict[str, torch.Size], bits: int):
        self.tensors, self.scales, self.shapes, self.bits = tensors, scales, shapes, bits

    @classmethod
    def dense(cls, stacked: dict[str, torch.Tensor]) -> "TaskTensors":
        """From dense tensors stacked per parameter, [K, *shape]."""
        return cls(stacked, {}, {p: v.shape[1:] for p, v in stacked.items()}, DENSE)

    @classmethod
    def read(cls, stored: StateDict, tower: StateDict, tasks: list[str], bits: int, prefix: str = "") -> "TaskTensors":
        """The parameters of `tower` that every task has in `stored` (`problem` names the others),
        taken out of `stored` as they are stacked, so a load holds them once."""
        names = [p for p in tower if all(f"{prefix}{t}/{p}" in stored for t in tasks)]
        if bits != DENSE:
            names = [p for p in names if all(f"{prefix}{t}/{p}{SCALE}" in stored for t in tasks)]
        stack = lambda suffix, p: torch.stack([stored.pop(f"{prefix}{t}/{p}{suffix}") for t in tasks])  # noqa: E731
        return cls({p: stack("", p) for p in names}, {} if bits == DENSE else {p: stack(SCALE, p) for p in names},
                   {p: tower[p].shape for p in names}, bits)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def one(self, name: str, k: int, device: torch.device) -> torch.Tensor:
        """Task k's tensor of `name` on `device`, in float32 (only task k's piece is copied there)."""
        if self.bits == DENSE:
            return self.tensors[name][k].to(device, non_blocking=True).float()
        return dequantize(self.tensors[name][k].to(device, non_blocking=True),
                          self.scales[name][k].to(device, non_blocking=True), self.bits, self.shapes[name])

    def stacked(self, name: str, device: torch.device) -> torch.Tensor:
        """Every task's tensor of `name`, [K, *shape] on `device`: as stored (dense) or decoded in float32."""
        if self.bits == DENSE:
            return self.tensors[name].to(device, non_blocking=True)
        codes, scales = self.tensors[name].to(device), self.scales[name].to(device)
        return torch.stack([dequantize(c, s, self.bits, self.shapes[name]) for c, s in zip(codes, scales)])

    def to(self, device: torch.device) -> "TaskTensors":
        move = lambda d: {p: v.to(device) for p, v in d.items()}  # noqa: E731
        return TaskTensors(move(self.tensors), move(self.scales), self.shapes, self.bits)

    def held_for(self, device: torch.device) -> "TaskTensors":
        """Where a servable on `device` keeps them: on the CPU, there; on an accelerator, in host
        memory (pinned where CUDA runs, so a copy does not wait on the host), so that the device
        holds its tower and its cache whatever K, and a tower's build copies one task's piece."""
        if device.type == "cpu":
            return self.to(device)
        pin = torch.cuda.is_available()
        host = lambda d: {p: v.cpu().pin_memory() if pin else v.cpu() for p, v in d.items()}  # noqa: E731
        return TaskTensors(host(self.tensors), host(self.scales), self.shapes, self.bits)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for d in (self.tensors, self.scales) for v in d.values())

    def problem(self, tower: StateDict, tasks: int) -> Optional[str]:
        """The first float parameter of `tower` whose tensors are missing or misshapen (or a
        parameter the tower lacks), else None."""
        for p, w in tower.items():
            if not w.is_floating_point():
                continue
            if p not in self.tensors or self.shapes[p] != w.shape:
                return p
            if self.bits == DENSE:
                expected = [(tasks, *w.shape)]
            else:
                size, groups = packed_size(w.numel(), self.bits)
                expected = [(tasks, size), (tasks, groups)]
            found = [tuple(self.tensors[p].shape)] + ([tuple(self.scales[p].shape)] if p in self.scales else [])
            if found != expected:
                return p
        return next((p for p in self.tensors if p not in tower), None)
