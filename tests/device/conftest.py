"""The fake-CUDA tier: every device path of pmerge run on device `cuda` in bf16 where it serves, on a
machine without a GPU, through PyTorch's fake tensors (`FakeTensorMode`).

Inside the mode every tensor is fake: it has a device, a dtype and a shape, no data. An operation
that mixes devices raises `FakeTensorDeviceMismatchError`, as a GPU would raise at run time, so a
host tensor left in a device path (a `torch.arange(n)` without `device=`, preferences built on the
CPU) fails here, in CI, and not in a user's first CUDA run.

What a fake device cannot run, and where the tests stop:
- data: `.item()`, `.tolist()` and data-dependent shapes (`unique`, `nonzero`) have no values to
  give. The code keeps them out of device paths: host work (a servable's `plan`) runs on real
  tensors (`on_host`), and device paths end in tensors that the host reads afterwards.
- the autograd engine, which asks the CUDA driver for its device: a training step runs its forward,
  its loss and its optimiser update (with gradients set by hand), not `backward()`.
- file I/O: data are loaded before entering the mode.
- a real host tensor moved to the fake device under `inference_mode` asks for the driver: the
  inputs a test hands to a device path are fake host tensors (`FakeCuda.host`), as the data a
  server holds in its host memory would be.
Modules are built on the host, as everywhere (`models_store.tower` builds them), and moved to the
device inside the mode, as torch allows fake tensors to be made.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

CUDA = torch.device("cuda")


class FakeCuda:
    """The fake device, and fake host tensors for the inputs a test gives a device path."""

    def __init__(self, mode: FakeTensorMode):
        self.mode, self.device = mode, CUDA

    def host(self, x: torch.Tensor) -> torch.Tensor:
        return self.mode.from_tensor(x)


@contextmanager
def fake_cuda() -> Iterator[FakeCuda]:
    import models_store.tower as tower
    real_build = tower._build_vision_tower

    def build_on_the_host(*args, **kwargs):
        with unset_fake_temporarily():
            return real_build(*args, **kwargs)

    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(False)  # host modules move by setting .data
    try:
        with mock.patch.object(tower, "_build_vision_tower", build_on_the_host), \
                mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None), \
                FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield FakeCuda(mode)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


@contextmanager
def on_host() -> Iterator[None]:
    """Real tensors again, inside the fake tier: a servable's plan, the data a test needs."""
    with unset_fake_temporarily():
        yield


def on_device(x: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """`x` is a fake tensor on the fake CUDA device (and of `dtype`)."""
    assert isinstance(x, FakeTensor) and x.device.type == "cuda", (type(x).__name__, x.device)
    if dtype is not None:
        assert x.dtype == dtype, x.dtype


@pytest.fixture
def cuda() -> Iterator[FakeCuda]:
    with fake_cuda() as fake:
        yield fake
