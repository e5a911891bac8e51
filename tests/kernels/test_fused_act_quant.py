"""The kernels that quantise the input of a W8A8 linear as they produce it -- (residual add +)
RMSNorm, and SiLU-and-mul -- against their references, the unfused kernels' composition."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.rms_norm_quant import rms_norm_quant, rms_norm_quant_ref
from lmdeploy.kernels.silu_and_mul_quant import silu_and_mul_quant, silu_and_mul_quant_ref

from ._util import DEVICE, ON_CUDA, cuda_only, gpu_cases

# int8 runs under the interpreter; float8 stores need a GPU.
QUANT_DTYPES = [torch.int8, pytest.param(torch.float8_e4m3fn, marks=cuda_only)]
NORM_SHAPES = [(1, 64), (7, 576), (2, 3, 130), *gpu_cases(((256, 4096),))]
ACT_SHAPES = [(1, 2 * 32), (5, 2 * 600), (2, 3, 2 * 70), *gpu_cases(((256, 2 * 14336),))]
ACT_DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=cuda_only)]


def _assert_codes_match(q, scales, q_ref, scales_ref, act_dtype=torch.float32) -> None:
    # In bfloat16 the kernel's and torch's norms may round a row's maximum one ulp apart.
    rtol = 1e-5 if act_dtype == torch.float32 else 2**-7
    torch.testing.assert_close(scales, scales_ref, rtol=rtol, atol=0)
    if q.dtype == torch.int8:
        # One rounding step apart at most (the division by the scale in another order).
        assert (q.int() - q_ref.int()).abs().max() <= 1
        assert (q != q_ref).float().mean() < 0.01
    else:
        # One e4m3 step (2^-3 relative; the smallest subnormal near zero) at most.
        torch.testing.assert_close(q.float(), q_ref.float(), rtol=2**-3, atol=2**-9)


@pytest.mark.parametrize("act_dtype", ACT_DTYPES)
@pytest.mark.parametrize("quant_dtype", QUANT_DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm_quant_matches_reference(shape, with_residual, quant_dtype, act_dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE, dtype=act_dtype) * 3
    residual = torch.randn(shape, device=DEVICE, dtype=act_dtype) if with_residual else None
    weight = torch.rand(shape[-1], device=DEVICE, dtype=act_dtype) + 0.5
    x_before = x.clone()
    q, scales, new_r = rms_norm_quant(x, weight, 1e-6, quant_dtype, residual)
    q_ref, scales_ref, new_r_ref = rms_norm_quant_ref(x, weight, 1e-6, quant_dtype, residual)
    assert q.dtype == quant_dtype and q.shape == shape and scales.shape == (*shape[:-1], 1)
    _assert_codes_match(q, scales, q_ref, scales_ref, act_dtype)
    if with_residual:
        torch.testing.assert_close(new_r, new_r_ref, rtol=0, atol=0)
    else:
        assert new_r is None
    assert torch.equal(x, x_before)  # the residual stream is the caller's, inputs untouched


@pytest.mark.parametrize("act_dtype", ACT_DTYPES)
@pytest.mark.parametrize("quant_dtype", QUANT_DTYPES)
@pytest.mark.parametrize("shape", ACT_SHAPES)
def test_silu_and_mul_quant_matches_reference(shape, quant_dtype, act_dtype):
    torch.manual_seed(1)
    x = torch.randn(shape, device=DEVICE, dtype=act_dtype) * 2
    q, scales = silu_and_mul_quant(x, quant_dtype)
    q_ref, scales_ref = silu_and_mul_quant_ref(x, quant_dtype)
    d = shape[-1] // 2
    assert q.dtype == quant_dtype and q.shape == (*shape[:-1], d)
    _assert_codes_match(q, scales, q_ref, scales_ref, act_dtype)


def test_strided_rows_and_an_all_zero_row():
    """Rows of a wider buffer (a packed gate_up output's view) and a padding row of zeros:
    the zero row gets zero codes and a finite scale."""
    torch.manual_seed(2)
    x = torch.randn(4, 3 * 64, device=DEVICE)[:, 32:160]
    x[1] = 0
    q, scales = silu_and_mul_quant(x)
    q_ref, scales_ref = silu_and_mul_quant_ref(x)
    _assert_codes_match(q, scales, q_ref, scales_ref)
    assert q[1].eq(0).all() and torch.isfinite(scales).all()
    normed_q, normed_scales, _ = rms_norm_quant(x, torch.ones(128, device=DEVICE), 1e-6)
    assert normed_q[1].eq(0).all() and torch.isfinite(normed_scales).all()


@pytest.mark.skipif(ON_CUDA, reason="the interpreter's check; the GPU runs the cases above")
def test_codes_use_the_full_int8_range():
    x = torch.tensor([[0.5, -2.0, 1.0, 4.0]])
    q, _, _ = rms_norm_quant(x, torch.ones(4), 1e-6)
    assert q.abs().amax().item() == 127
