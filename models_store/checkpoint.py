"""State dicts on disk: safetensors only, written atomically, hashed for manifests.

Torch is imported by the functions that read or write tensors, so that reading manifests (and the
commands that only do that) never pays for it."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from . import StoreError
from .atomic import atomic_file

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]


def save_state_dict(path: str | Path, state: StateDict, metadata: dict[str, str] | None = None) -> None:
    """Write `state` as safetensors atomically (contiguous CPU copies; shared storage is fine)."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous().clone() if _shares_storage(v) else v.detach().to("cpu").contiguous()
               for k, v in state.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _shares_storage(t: "torch.Tensor") -> bool:
    # safetensors refuses views of a larger storage (tied or sliced tensors): copy those only
    return t.untyped_storage().nbytes() != t.numel() * t.element_size()


def load_state_dict(path: str | Path, device: "str | torch.device" = "cpu") -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"missing file: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(f"{path} is not a readable safetensors file: {e}") from e


def payload_bytes(path: str | Path) -> int:
    """The bytes of a safetensors file's tensors, from its header alone (no torch, nothing loaded)."""
    import json
    import struct
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
