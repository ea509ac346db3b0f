"""Group-wise symmetric quantisation of a tensor to 2, 4 or 8 bits (TVQ's task-vector
quantisation, arXiv 2503.06921, in its plainest form).

The tensor, flattened and padded to whole groups of GROUP values, gets one float16 scale per group,
absmax / L with L = 2^(bits-1) - 1, and each value the integer round(x / scale) in [-L, L], stored
as the code q + L in `bits` bits, 8 / bits codes to a byte, the first in the lowest bits. So a
value costs bits + 16 / GROUP bits: 4.25 at 4 bits, a seventh and a half of float32.

Decoding is one elementwise pass (shifts, a mask, a multiply), on whatever device holds the codes.
"""
from __future__ import annotations

import math

import torch

BITS = (2, 4, 8)
GROUP = 64


def levels(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"quantisation to {bits} bits: supported are {', '.join(map(str, BITS))}")
    return (1 << (bits - 1)) - 1


def packed_size(numel: int, bits: int, group: int = GROUP) -> tuple[int, int]:
    """(bytes of the codes, scales) of a tensor of `numel` values."""
    groups = math.ceil(numel / group)
    return groups * group * bits // 8, groups


def quantize(x: torch.Tensor, bits: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (codes uint8 [bytes], scales float16 [groups]), computed in float32 on x's device."""
    top = levels(bits)
    flat = x.detach().reshape(-1).float()
    grouped = torch.nn.functional.pad(flat, (0, (-flat.numel()) % group)).reshape(-1, group)
    scales = (grouped.abs().amax(1) / top).half()
    # quantised against the scale as stored (float16, subnormal for a small group's): a group whose
    # scale is 0 holds values below float16's range, which become codes of 0
    stored = scales.float()
    safe = torch.where(stored > 0, stored, torch.ones_like(stored))
    codes = ((grouped / safe[:, None]).round().clamp(-top, top) + top).to(torch.uint8).reshape(-1, 8 // bits)
    shifts = torch.arange(0, 8, bits, device=x.device, dtype=torch.uint8)
    return (codes << shifts).sum(1, dtype=torch.uint8), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, bits: int, shape: torch.Size | tuple[int, ...],
               group: int = GROUP) -> torch.Tensor:
    """The float32 tensor of `shape` that (codes, scales) encode, on their device."""
    top = levels(bits)
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
    values = ((codes[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1, group).float() - top
    numel = math.prod(shape)
    return (values * scales.float()[:, None]).reshape(-1)[:numel].reshape(shape)
