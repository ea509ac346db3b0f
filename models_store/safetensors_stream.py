"""Stream a safetensors file from an iterator of tensors, holding one tensor at a time.

`safetensors.torch.save_file` needs every tensor in memory at once; for a merged checkpoint that
would be a whole extra copy of the adapted weights. The format is simple (8-byte little-endian
header length, JSON header with dtype/shape/offsets, raw little-endian bytes), and shapes and
dtypes are known up front, so the header is written first and the bytes streamed after it.
"""
from __future__ import annotations

import json
import struct
import sys
from typing import Iterable, Iterator, Sequence

import torch

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}

Spec = tuple[str, torch.dtype, tuple[int, ...]]


def header_bytes(specs: Sequence[Spec], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in DTYPES:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors name")
        size = _numel(shape) * _itemsize(dtype)
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def stream_size(specs: Sequence[Spec], metadata: dict[str, str]) -> int:
    """The exact byte size of the file that `stream_chunks` yields for these specs."""
    return len(header_bytes(specs, metadata)) + sum(_numel(shape) * _itemsize(dtype) for _, dtype, shape in specs)


def stream_chunks(specs: Sequence[Spec], tensors: Iterable[tuple[str, torch.Tensor]],
                  metadata: dict[str, str]) -> Iterator[bytes | memoryview]:
    """The header for `specs`, then the bytes of each tensor of `tensors` (same names, same order)."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors streaming needs a little-endian host")
    yield header_bytes(specs, metadata)
    for (name, dtype, shape), (got, t) in zip(specs, tensors, strict=True):
        if got != name or t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise ValueError(f"tensor {got} {t.dtype} {tuple(t.shape)} does not match header entry "
                             f"{name} {dtype} {tuple(shape)}")
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            yield flat.view(torch.uint8).numpy().data  # a memoryview: no extra copy


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
