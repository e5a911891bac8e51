"""The CUDA path of AWQ and GPTQ linears: checkpoint tensors (written by the reference
quantizer's packers) loaded through the packed-shard loader, converted to the W4A16 kernel's
layout as on a GPU, and multiplied by the kernel, equal the dequantised dense linear. Without
a GPU the conversion runs on CPU tensors and the kernel under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.layers.linear import MergedColumnParallelLinear
from lmdeploy.adapters.engines.pytorch.layers.quantization.awq import AWQConfig
from lmdeploy.adapters.engines.pytorch.layers.quantization.gptq import GPTQConfig
from tests.integration.quant_formats import quantize_rtn, to_awq, to_gptq

from ._util import DEVICE, TOL

FORMATS = {
    "awq_g32": (AWQConfig(group_size=32), lambda c, z, s: to_awq(c, z, s, 32)[0], 32),
    "gptq_g64": (GPTQConfig(group_size=64), lambda c, z, s: to_gptq(c, z, s, 64, False)[0], 64),
}


@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_a_gate_up_linear_loaded_by_shards_runs_the_kernel_as_its_dense_weight(fmt, rows, bias):
    """With a bias too (Qwen2's q/k/v): one row adds it in the GEMV, more after the product."""
    quant_config, write, group = fmt
    torch.manual_seed(0)
    layer = MergedColumnParallelLinear(128, [48, 48], bias=bias, quant_config=quant_config)
    dense, biases = [], []
    for shard in (0, 1):
        codes, zeros, scales, dequant = quantize_rtn(torch.randn(48, 128) * 0.1, group, sym=False)
        for name, tensor in write(codes, zeros, scales).items():
            layer.weight_loader(getattr(layer, name), tensor, shard)
        dense.append(dequant)
        if bias:
            biases.append(torch.randn(48))
            layer.weight_loader(layer.bias, biases[-1], shard)
    layer.to(DEVICE)
    layer.method.process_weights_after_loading(layer, torch.device("cuda"))
    assert layer.qweight.shape == (128 // 8, 96) and not hasattr(layer, "qzeros")
    x = torch.randn(rows, 128, device=DEVICE)
    expected_bias = torch.cat(biases).to(DEVICE) if bias else None
    expected = F.linear(x, torch.cat(dense).to(DEVICE), expected_bias)
    torch.testing.assert_close(layer(x), expected, **TOL[torch.float32])
