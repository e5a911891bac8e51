"""Per-token activation quantisation and the W8A8 GEMM against their torch references."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.per_token_quant import (
    fake_per_token_quant,
    per_token_quant,
    per_token_quant_ref,
)
from lmdeploy.kernels.w8a8_gemm import w8a8_gemm, w8a8_gemm_ref

from ._util import DEVICE, ON_CUDA, gpu_cases

QUANT_SHAPES = [(1, 5), (7, 576), (3, 4, 130), *gpu_cases(((4096, 4096),))]
GEMM_SHAPES = [(1, 40, 70), (17, 33, 130), (40, 96, 64), *gpu_cases(((1024, 4096, 14336),))]


@pytest.mark.parametrize("shape", QUANT_SHAPES)
def test_per_token_int8_matches_reference(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE) * torch.rand(shape[-1], device=DEVICE) * 5
    q, scales = per_token_quant(x)
    q_ref, scales_ref = per_token_quant_ref(x)
    torch.testing.assert_close(scales, scales_ref)
    # One rounding step apart at most (x / s computed in another order).
    assert (q.int() - q_ref.int()).abs().max() <= 1
    assert q.dtype == torch.int8 and scales.shape == (*shape[:-1], 1)


def test_per_token_int8_uses_the_full_range_per_row():
    x = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0], [300.0, 1.0, -3.0]], device=DEVICE)
    q, scales = per_token_quant(x)
    assert q.abs().amax(dim=-1).tolist() == [127, 0, 127]
    torch.testing.assert_close(fake_per_token_quant(x)[2], x[2], atol=300 / 254, rtol=0)
    assert torch.isfinite(scales).all()


@pytest.mark.skipif(
    not ON_CUDA and not hasattr(torch, "float8_e4m3fn"), reason="torch has no float8"
)
def test_per_token_fp8_matches_reference():
    torch.manual_seed(1)
    x = torch.randn(9, 200, device=DEVICE) * 3
    q, scales = per_token_quant_ref(x, torch.float8_e4m3fn)
    assert q.float().abs().amax(dim=-1).eq(448).all()
    torch.testing.assert_close(q.float() * scales, x, atol=0, rtol=2**-3)
    if ON_CUDA:
        q_k, scales_k = per_token_quant(x, torch.float8_e4m3fn)
        torch.testing.assert_close(scales_k, scales)
        torch.testing.assert_close(q_k.float(), q.float())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mnk", GEMM_SHAPES)
def test_int8_gemm_matches_reference(mnk, bias):
    m, n, k = mnk
    torch.manual_seed(2)
    a_q = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=DEVICE)
    b_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEVICE)
    a_scale = torch.rand(m, 1, device=DEVICE) / 100
    b_scale = torch.rand(n, 1, device=DEVICE) / 100
    b = torch.randn(n, device=DEVICE) if bias else None
    out = w8a8_gemm(a_q, a_scale, b_q, b_scale, torch.float32, b)
    torch.testing.assert_close(
        out, w8a8_gemm_ref(a_q, a_scale, b_q, b_scale, torch.float32, b), atol=1e-4, rtol=1e-5
    )


def test_int8_pipeline_approximates_the_float_matmul():
    """Quantise both sides as the engine does; the product stays close to x @ w^T."""
    torch.manual_seed(3)
    x, w = torch.randn(11, 96, device=DEVICE), torch.randn(50, 96, device=DEVICE)
    x_q, x_s = per_token_quant(x)
    w_q, w_s = per_token_quant_ref(w)  # per output channel = per row of w
    out = w8a8_gemm(x_q, x_s, w_q, w_s, torch.float32)
    rel = (out - x @ w.t()).norm() / (x @ w.t()).norm()
    assert rel < 0.02


def test_gemm_refuses_mixed_operands():
    a = torch.zeros(2, 4, dtype=torch.int8)
    with pytest.raises(AssertionError, match="operands differ"):
        w8a8_gemm(a, torch.ones(2, 1), a.float(), torch.ones(2, 1), torch.float32)


def test_decode_and_prefill_rows_are_tuned_apart_over_tiles_that_fit():
    """Batch-256 decode and an 8k-token prefill chunk are different size classes, and each
    class is tuned only over tiles of its height (never none)."""
    from lmdeploy.kernels.w8a8_gemm import _configs, _prune, size_class

    classes = [size_class(m) for m in (1, 16, 17, 64, 256, 1024, 8192)]
    assert classes == [16, 16, 64, 64, 256, 1024, 4096]
    for bucket in sorted(set(classes)):
        tiles = [c.kwargs["BLOCK_M"] for c in _prune(_configs(), {"m_bucket": bucket})]
        assert tiles and max(tiles) <= max(bucket, 256) and (bucket < 1024 or min(tiles) >= 64)
    assert {c.kwargs["BLOCK_M"] for c in _prune(_configs(), {"m_bucket": 16})} == {16}
