"""RMSNorm and fused residual-add + RMSNorm against the torch reference and the engine's norm."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.rms_norm import (
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)

from ._util import DEVICE, DTYPES, TOL, gpu_cases

SHAPES = [(1, 16), (7, 300), (33, 1000), (2, 5, 576), *gpu_cases(((4096, 4096),), ((300, 8192),))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(shape[-1], dtype=dtype, device=DEVICE)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_add_rms_norm(shape, dtype):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    residual = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = torch.randn(shape[-1], dtype=dtype, device=DEVICE)
    x0, r0 = x.clone(), residual.clone()
    normed, new_residual = fused_add_rms_norm(x, residual, w, 1e-5)
    ref_normed, ref_residual = fused_add_rms_norm_ref(x, residual, w, 1e-5)
    torch.testing.assert_close(new_residual, ref_residual, **TOL[dtype])
    torch.testing.assert_close(normed, ref_normed, **TOL[dtype])
    assert torch.equal(x, x0) and torch.equal(residual, r0), "inputs must be left untouched"


def test_strided_rows_and_fp32_weight():
    """Rows that are a slice of a wider tensor; a float32 weight with float32 input."""
    torch.manual_seed(2)
    x = torch.randn(6, 200, device=DEVICE)[:, :96]
    w = torch.randn(96, device=DEVICE)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), **TOL[torch.float32])


def test_matches_engine_norm():
    from lmdeploy.adapters.engines.pytorch.layers.norm import RMSNorm

    torch.manual_seed(3)
    norm = RMSNorm(576, 1e-5).to(DEVICE)
    with torch.no_grad():
        norm.weight.normal_()
        x = torch.randn(9, 576, device=DEVICE)
        torch.testing.assert_close(rms_norm(x, norm.weight, 1e-5), norm(x), **TOL[torch.float32])
