"""The AVX2 skinny GEMM for decode-sized row counts (csrc/skinny_gemm.c) against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.backends.cpu import skinny_gemm
from lmdeploy.adapters.engines.pytorch.backends.cpu.linear import PackedLinear, can_pack

pytestmark = pytest.mark.skipif(
    not skinny_gemm.available(), reason="no C compiler or no AVX2/FMA: oneDNN serves every row"
)


@pytest.mark.parametrize("rows", [1, 5, 6, 7, 12, 16])  # tiles of 6 rows: partial and clamped
@pytest.mark.parametrize("n,k", [(16, 64), (45, 577), (960, 576)])  # a partial last panel
def test_equals_float64_product(rows, n, k):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    weight = torch.randn(n, k, generator=g)
    wide = torch.randn(rows, k + 9, generator=g)
    x = wide[:, :k]  # rows at a stride: the kernel reads x in place
    y = skinny_gemm.matmul(x, skinny_gemm.pack(weight), n)
    expected = x.double() @ weight.double().t()
    assert y.shape == (rows, n)
    assert ((y.double() - expected).abs().max() / expected.abs().max()).item() < 3e-6


@pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32), reason="no oneDNN")
@pytest.mark.parametrize("rows", [3, 16, 40])  # 40 rows: oneDNN's path
def test_packed_linear_with_bias_on_either_path(rows):
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(100, 64, generator=g), torch.randn(100, generator=g)
    x = torch.randn(rows, 64, generator=g)
    linear = PackedLinear(weight, bias)
    assert linear.panels is not None
    torch.testing.assert_close(linear(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
