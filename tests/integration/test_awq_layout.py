"""AutoAWQ's gemm layout as `lite auto_awq` writes it, and its dequantising reference."""

from __future__ import annotations

import torch

from lmdeploy.adapters.quantization.awq_layout import (
    dequantize_awq,
    dequantize_groups,
    pack_awq,
    quantize_groups,
    to_awq_tensors,
    unpack_awq,
)


def test_columns_0_to_7_pack_in_autoawqs_nibble_order():
    # AutoAWQ puts columns 0, 2, 4, 6, 1, 3, 5, 7 into nibbles 0..7 (lowest first).
    codes = torch.arange(8, dtype=torch.int32).repeat(3, 2)
    packed = pack_awq(codes)
    assert packed.shape == (3, 2)
    assert packed.eq(0x75316420).all()
    assert torch.equal(unpack_awq(packed), codes)


def test_group_quantisation_is_round_to_nearest_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(24, 192)
    quant = quantize_groups(w, 64)
    assert quant.codes.min() >= 0 and quant.codes.max() <= 15
    error = (dequantize_groups(quant, 64) - w).abs().reshape(24, 3, 64)
    assert (error <= quant.scales[..., None] / 2 + 1e-6).all()


def test_the_checkpoint_tensors_dequantise_to_the_quantised_weight():
    torch.manual_seed(1)
    w = torch.randn(40, 256) * 0.05
    quant = quantize_groups(w, 128)
    tensors = to_awq_tensors(quant)
    assert tensors["qweight"].shape == (256, 5) and tensors["qweight"].dtype == torch.int32
    assert tensors["qzeros"].shape == (2, 5) and tensors["scales"].shape == (2, 40)
    assert tensors["scales"].dtype == torch.float16
    dense = dequantize_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"], 128)
    torch.testing.assert_close(dense, dequantize_groups(quant, 128), rtol=0, atol=1e-6)
