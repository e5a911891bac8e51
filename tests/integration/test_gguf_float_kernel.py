"""csrc/gguf_float.c: GGUF blocks times float32 activations, against llama.cpp's reference
dequantisation (the `gguf` package) followed by a float64 matmul, on each vector path."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_float

pytestmark = pytest.mark.skipif(not gguf_float.available(), reason="needs a C compiler")

# The native build (AVX-512 or AVX2 where the CPU has them), and the narrower paths forced.
VARIANTS = {
    "native": (),
    "avx2": ("-mno-avx512f",),
    "plain C": ("-mno-avx2", "-mno-avx512f", "-mno-fma", "-mno-f16c"),
}


def _quantized(qtype: str, rows: int, cols: int) -> tuple[torch.Tensor, np.ndarray]:
    kind = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    blocks = gguf.quants.quantize(w, kind)
    return torch.from_numpy(np.ascontiguousarray(blocks)), gguf.quants.dequantize(blocks, kind)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("qtype", list(gguf_float.TYPE_IDS))
@pytest.mark.parametrize("rows", [1, 3, 5, 37])  # decode's in-register path; prefill's tiles
def test_matmul_equals_dequantize_then_matmul(qtype, rows, variant):
    lib = gguf_float.library(VARIANTS[variant])
    if variant == "plain C":
        assert lib.gguf_float_lanes() == 1
    elif variant == "avx2" and "avx2" in open("/proc/cpuinfo").read():
        assert lib.gguf_float_lanes() == 8
    blocks, w = _quantized(qtype, 70, 320)  # 70 outputs: a partial tile of columns
    x = torch.randn(rows, 640, generator=torch.Generator().manual_seed(rows))[:, ::2]
    bias = torch.randn(70, generator=torch.Generator().manual_seed(7))
    y = gguf_float.matmul(x, blocks, qtype, 70, bias, lib)
    expected = x.double().numpy() @ w.astype(np.float64).T + bias.double().numpy()
    # Only float32 summation differs from the float64 reference: ~1e-6 of |y|'s scale (~20).
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-4)
