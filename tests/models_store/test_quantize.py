"""Group-wise quantisation of a family's targets (models_store/quantize.py)."""
import pytest
import torch

from models_store.quantize import GROUP, dequantize, packed_size, quantize


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_each_value_comes_back_within_half_its_groups_step(bits):
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(bits)) * torch.logspace(-3, 0, 19)
    codes, scales = quantize(x, bits)
    assert codes.dtype == torch.uint8 and scales.dtype == torch.float16
    assert (codes.numel(), scales.numel()) == packed_size(x.numel(), bits)
    back = dequantize(codes, scales, bits, x.shape)
    assert back.shape == x.shape and back.dtype == torch.float32
    flat = torch.nn.functional.pad(x.reshape(-1), (0, (-x.numel()) % GROUP)).reshape(-1, GROUP)
    step = (flat.abs().amax(1) / ((1 << (bits - 1)) - 1)).repeat_interleave(GROUP)[:x.numel()].reshape(x.shape)
    # half a step, plus the float16 rounding of the scale times the largest code
    assert ((back - x).abs() <= step / 2 + step * 2 ** -10 * (1 << (bits - 1)) + 1e-7).all()


@pytest.mark.parametrize("bits, bound", [(2, 0.75), (4, 0.12), (8, 0.007)])
def test_a_task_vectors_small_values_keep_their_precision(bits, bound):
    """A task vector's entries are about 1e-3: a group's scale, absmax / L, is then a float16
    subnormal at 8 bits. The codes are made against that stored scale (they were made against a
    scale clamped to float16's smallest normal, and came back at a third of their size)."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(bits)) * 1e-3
    codes, scales = quantize(x, bits)
    back = dequantize(codes, scales, bits, x.shape)
    assert (back - x).norm() / x.norm() < bound


def test_a_group_of_zeros_stays_zero_and_a_value_on_the_grid_is_exact():
    x = torch.cat([torch.zeros(GROUP), torch.full((GROUP,), 7 / 16)])
    codes, scales = quantize(x, 4)
    assert torch.equal(dequantize(codes, scales, 4, x.shape), x)


def test_an_unsupported_width_is_refused_by_name():
    with pytest.raises(ValueError, match="3 bits: supported are 2, 4, 8"):
        quantize(torch.ones(4), 3)
