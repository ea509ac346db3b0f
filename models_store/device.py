"""The one device chooser of the trainer, the service and the benchmarks."""
from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """`auto` (the GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} requested but no CUDA device is available")
    return device
