"""The CUDA path of W8A8 linears: an int8 q/k/v linear loaded by shards and prepared as on a
GPU multiplies through the per-token quantisation and int8 GEMM kernels, and equals what the
CPU path computes (dequantised weight, per-token fake-quantised activations). Without a GPU
the kernels run on CPU tensors under Triton's interpreter; FP8 needs a GPU with FP8 cores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.layers.linear import QKVParallelLinear
from lmdeploy.adapters.engines.pytorch.layers.quantization.w8a8 import SmoothQuantConfig
from lmdeploy.kernels.per_token_quant import fake_per_token_quant, per_token_quant_ref

from ._util import DEVICE, ON_CUDA

FP8_CORES = ON_CUDA and torch.cuda.get_device_capability() >= (8, 9)
QUANT_DTYPES = {
    "int8": torch.int8,
    "float8_e4m3fn": pytest.param(
        torch.float8_e4m3fn, marks=pytest.mark.skipif(not FP8_CORES, reason="FP8 tensor cores")
    ),
}


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("quant_dtype", QUANT_DTYPES.values(), ids=QUANT_DTYPES.keys())
def test_a_qkv_linear_loaded_by_shards_runs_the_kernels_as_the_cpu_path(quant_dtype, rows):
    torch.manual_seed(0)
    name = str(quant_dtype).removeprefix("torch.")
    layer = QKVParallelLinear(96, 16, 4, 2, bias=True, quant_config=SmoothQuantConfig(name))
    dense = []
    for shard, size in (("q", 64), ("k", 32), ("v", 32)):
        q, scale = per_token_quant_ref(torch.randn(size, 96) * 0.05, quant_dtype)
        layer.weight_loader(layer.weight, q, shard)
        layer.weight_loader(layer.scale, scale, shard)
        layer.weight_loader(layer.bias, torch.linspace(-1, 1, size), shard)
        dense.append(q.float() * scale)
    layer.to(DEVICE)
    layer.method.process_weights_after_loading(layer, torch.device("cuda"))
    assert layer.weight.dtype == quant_dtype  # kept 8-bit for the GEMM
    x = torch.randn(2, rows, 96, device=DEVICE)
    w = torch.cat(dense).to(DEVICE)
    expected = F.linear(fake_per_token_quant(x, quant_dtype), w, layer.bias)
    out = layer(x)
    assert out.shape == (2, rows, 128)
    # int8: exact integer products; a code may flip where the GPU's division rounds a hair
    # differently (one code: ~4e-3 here). FP8: cuBLASLt writes bfloat16.
    tol = dict(atol=5e-3, rtol=1e-3) if quant_dtype == torch.int8 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, expected, **tol)
