"""One device chooser and one Head.to for the trainer, the service and the benchmarks."""
import pytest
import torch

from models_store.device import pick_device
from models_store.zoo import Head


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda:0")


def test_head_to_copies_weight_and_bias():
    head = Head(weight=torch.randn(3, 4, dtype=torch.float64), bias=torch.randn(3, dtype=torch.float64))
    moved = head.to("cpu", torch.float32)
    assert moved.weight.dtype == moved.bias.dtype == torch.float32 and head.weight.dtype == torch.float64
    assert torch.allclose(moved.weight, head.weight.float()) and Head(weight=head.weight).to("cpu").bias is None
