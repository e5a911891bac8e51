"""The fused int4-dequant GEMM against its reference, and the reference against plain math."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.w4a16_gemm import (
    dequantize_int4_rows,
    pack_int4_rows,
    unpack_int4_rows,
    w4a16_gemm,
    w4a16_gemm_ref,
)

from ._util import DEVICE, DTYPES, TOL, cuda_only, gpu_cases


def _random_int4(k: int, n: int, group: int, dtype: torch.dtype):
    codes = torch.randint(0, 16, (k, n), device=DEVICE)
    scales = (torch.rand(k // group, n, device=DEVICE) * 0.02 + 0.001).to(dtype)
    zeros = torch.randint(0, 16, (k // group, n), device=DEVICE).to(dtype)
    return codes, pack_int4_rows(codes), scales, zeros


def test_pack_and_unpack_are_inverse_and_dequantize_is_the_affine_map():
    codes, qweight, scales, zeros = _random_int4(64, 24, 32, torch.float32)
    assert qweight.shape == (8, 24)
    assert torch.equal(unpack_int4_rows(qweight), codes.to(torch.int32))
    w = dequantize_int4_rows(qweight, scales, zeros, 32)
    torch.testing.assert_close(w[40, 7], (codes[40, 7] - zeros[1, 7]) * scales[1, 7])


# (M, K, N, group): decode rows (split-K) and prefill rows, N not a multiple of the tile.
SHAPES = [
    (1, 128, 40, 32),  # GEMV kernel
    (1, 512, 40, 32),  # GEMV, K split over 8 programs
    (3, 256, 72, 64),  # tensor cores from 2 rows
    (12, 512, 50, 32),  # tensor-core kernel, K split
    (16, 256, 64, 128),
    (17, 512, 50, 32),  # 64-row tiles, K split
    (70, 128, 136, 64),
    (300, 128, 136, 32),  # dequantize + dense GEMM
    (80, 256, 136, 128),
    (9, 192, 40, 64),  # K split over 3 programs of one group each
    *gpu_cases((1, 4096, 6144, 128), (64, 4096, 28672, 128), (1024, 14336, 4096, 128)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, k, n, group", SHAPES)
def test_matches_reference(m, k, n, group, dtype):
    torch.manual_seed(0)
    _, qweight, scales, zeros = _random_int4(k, n, group, dtype)
    x = torch.randn(m, k, device=DEVICE, dtype=dtype)
    got = w4a16_gemm(x, qweight, scales, zeros, group)
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, group)
    scale = expected.float().abs().max().item() + 1.0
    torch.testing.assert_close(got.float() / scale, expected.float() / scale, **TOL[dtype])


def test_decode_rows_split_k_and_prefill_rows_do_not():
    from lmdeploy.kernels.w4a16_gemm import _config

    assert _config(1, 40, 512, 32)["SPLIT_K"] == 8 and "BLOCK_M" not in _config(1, 40, 512, 32)
    assert _config(12, 50, 512, 32)["BLOCK_M"] == 16 and _config(12, 50, 512, 32)["SPLIT_K"] > 1
    assert _config(1, 4096, 4096, 128)["SPLIT_K"] > 1
    assert _config(64, 4096, 4096, 128)["SPLIT_K"] > 1
    assert _config(100, 4096, 4096, 128)["SPLIT_K"] == 1


@pytest.mark.parametrize("m", [1, 40])
def test_split_k_counters_are_left_zero_so_repeated_calls_agree(m):
    """The last program of each column tile resets its counter: a second call (a graph
    replay) must reduce again, not skip or double the sum."""
    from lmdeploy.kernels.w4a16_gemm import _split_counters

    torch.manual_seed(2)
    _, qweight, scales, zeros = _random_int4(512, 48, 64, torch.float32)
    x = torch.randn(m, 512, device=DEVICE)
    first = w4a16_gemm(x, qweight, scales, zeros, 64)
    assert int(_split_counters(x.device).abs().sum()) == 0
    torch.testing.assert_close(w4a16_gemm(x, qweight, scales, zeros, 64), first, rtol=0, atol=0)
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, 64)
    torch.testing.assert_close(first, expected, **TOL[torch.float32])


def test_fused_tiles_beyond_the_dense_threshold_when_forced():
    """Rows past FUSED_ROWS go to dequantize + dense GEMM by default; the fused tensor-core
    kernel still computes them right when a benchmark forces its tiles."""
    torch.manual_seed(3)
    _, qweight, scales, zeros = _random_int4(256, 40, 32, torch.float32)
    x = torch.randn(80, 256, device=DEVICE)
    cfg = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4)
    got = w4a16_gemm(x, qweight, scales, zeros, 32, config=cfg)
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, 32)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


def test_leading_dims_and_strided_rows():
    torch.manual_seed(1)
    _, qweight, scales, zeros = _random_int4(64, 16, 32, torch.float32)
    x = torch.randn(2, 3, 128, device=DEVICE)[..., 32:96]  # rows of a wider buffer
    got = w4a16_gemm(x, qweight, scales, zeros, 32)
    assert got.shape == (2, 3, 16)
    torch.testing.assert_close(
        got, w4a16_gemm_ref(x, qweight, scales, zeros, 32), **TOL[torch.float32]
    )


# The one-row GEMV (codes read as denormals, x scaled to meet them): N not a multiple of its
# 256-column tile, each group size, K split over programs.
GEMV_SHAPES = [(256, 300, 32), (512, 260, 64), (512, 100, 128)]


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, n, group", GEMV_SHAPES)
def test_the_one_row_gemv_matches_the_reference(k, n, group, x_dtype):
    from lmdeploy.kernels.w4a16_gemm import _config

    assert _config(1, n, k, group)["SPLIT_K"] > 1 and n % _config(1, n, k, group)["BLOCK_N"]
    torch.manual_seed(4)
    _, qweight, scales, zeros = _random_int4(k, n, group, x_dtype)
    x = torch.randn(1, k, device=DEVICE).to(x_dtype)
    got = w4a16_gemm(x, qweight, scales, zeros, group).float()
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, group).float()
    scale = expected.abs().max().item()
    torch.testing.assert_close(got / scale, expected / scale, **TOL[x_dtype])


@pytest.mark.parametrize("magnitude", [2.0**-40, 2.0**40])
def test_the_one_row_gemv_keeps_its_precision_far_from_unit_activations(magnitude):
    """The products are x q 2^-64 (x scaled by up to 2^85): activations near the ends of the
    range the kernel documents neither overflow nor fall into denormals."""
    torch.manual_seed(5)
    _, qweight, scales, zeros = _random_int4(256, 40, 64, torch.float32)
    x = torch.randn(1, 256, device=DEVICE) * magnitude
    got = w4a16_gemm(x, qweight, scales, zeros, 64)
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, 64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got / magnitude, expected / magnitude, **TOL[torch.float32])


# The tensor-core kernel (2..64 rows, a dot per nibble plane): odd rows and columns, each group
# size (32 and 64: a 128-row tile spans groups), K split or not, K not a multiple of its
# 128-row tile (the last tile partial), x in float32 (bfloat16 on the GPU: the interpreter's
# bfloat16 dot is wrong, numpy having no bfloat16).
TC_SHAPES = [
    (2, 256, 40, 128, 1),
    (5, 384, 72, 32, 3),
    (15, 576, 50, 64, 2),
    (17, 192, 24, 64, 1),
    (33, 320, 40, 32, 2),
    (63, 256, 72, 128, 2),
]


@pytest.mark.parametrize("x_dtype", [torch.float32, pytest.param(torch.bfloat16, marks=cuda_only)])
@pytest.mark.parametrize("m, k, n, group, split", TC_SHAPES)
def test_the_tensor_core_kernel_matches_the_reference(m, k, n, group, split, x_dtype):
    from lmdeploy.kernels.w4a16_gemm import _config

    torch.manual_seed(6)
    _, qweight, scales, zeros = _random_int4(k, n, group, x_dtype)
    x = torch.randn(m, k, device=DEVICE).to(x_dtype)
    cfg = _config(m, n, k, group) | {"SPLIT_K": split}
    got = w4a16_gemm(x, qweight, scales, zeros, group, config=cfg).float()
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, group).float()
    scale = expected.abs().max().item()
    torch.testing.assert_close(got / scale, expected / scale, **TOL[x_dtype])


def test_the_tensor_core_kernel_refuses_planes_shallower_than_a_dot():
    _, qweight, scales, zeros = _random_int4(256, 40, 64, torch.float32)
    x = torch.randn(4, 256, device=DEVICE)
    cfg = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1, num_warps=4)
    with pytest.raises(AssertionError, match="BLOCK_K >= 128"):
        w4a16_gemm(x, qweight, scales, zeros, 64, config=cfg)


# One row with the K split (the first split's partial carries the bias) and whole, then rows
# past the GEMV (the bias added after the product).
@pytest.mark.parametrize("m, k, n, group", [(1, 512, 260, 64), (1, 64, 40, 32), (5, 256, 72, 64)])
def test_the_bias_is_added_once(m, k, n, group):
    torch.manual_seed(5)
    _, qweight, scales, zeros = _random_int4(k, n, group, torch.float32)
    x = torch.randn(m, k, device=DEVICE)
    bias = torch.randn(n, device=DEVICE)
    got = w4a16_gemm(x, qweight, scales, zeros, group, bias=bias)
    expected = w4a16_gemm_ref(x, qweight, scales, zeros, group) + bias
    torch.testing.assert_close(got, expected, **TOL[torch.float32])
