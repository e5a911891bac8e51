"""The dense decode GEMV against its reference (plain multiply-add, so bf16 runs under the
interpreter too), and the reference against plain math."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.dense_gemv import dense_gemv, dense_gemv_ref, gemv_candidates, gemv_config
from lmdeploy.kernels.rms_norm import fused_add_rms_norm, rms_norm

from ._util import DEVICE, gpu_cases

TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.bfloat16: {"atol": 0.3, "rtol": 2e-2}}
SPLIT = dict(BLOCK_N=8, BLOCK_K=64, SPLIT_K=3, num_warps=4)

# (M, K, N, bias, config): odd N (a partial column tile), K not a multiple of the tile, split-K
# with an empty last split, and up to 4 rows.
CASES = [
    (1, 1024, 37, False, None),
    (1, 1000, 21, True, None),
    (1, 200, 13, True, SPLIT),  # 4 K tiles over 3 splits: 2, 2 and none
    (2, 328, 9, False, SPLIT),
    (3, 520, 19, True, None),
    (4, 96, 8, True, dict(SPLIT, BLOCK_N=4, BLOCK_K=32, SPLIT_K=2)),
    *gpu_cases((1, 4096, 6144, False, None), (1, 14336, 4096, True, None)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n", "bias", "config"), CASES)
def test_dense_gemv_matches_reference(m, k, n, bias, config, dtype):
    torch.manual_seed(m * k + n)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    w = torch.randn(n, k, device=DEVICE).to(dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    y = dense_gemv(x, w, b, config)
    assert y.shape == (m, n) and y.dtype == dtype
    torch.testing.assert_close(y, dense_gemv_ref(x, w, b), **TOL[dtype])


def test_split_k_sum_is_deterministic_and_leaves_counters_reusable():
    x = torch.randn(1, 200, device=DEVICE)
    w = torch.randn(13, 200, device=DEVICE)
    first = dense_gemv(x, w, None, SPLIT)
    for _ in range(2):
        assert torch.equal(dense_gemv(x, w, None, SPLIT), first)


def test_leading_dims_are_kept_and_more_rows_are_refused():
    w = torch.randn(5, 64, device=DEVICE)
    assert dense_gemv(torch.randn(1, 1, 64, device=DEVICE), w).shape == (1, 1, 5)
    with pytest.raises(AssertionError, match="use F.linear"):
        dense_gemv(torch.randn(5, 64, device=DEVICE), w)


def test_reference_is_x_times_w_transposed_plus_bias():
    x, w, b = torch.randn(2, 6), torch.randn(3, 6), torch.randn(3)
    torch.testing.assert_close(dense_gemv_ref(x, w, b), x @ w.T + b)


def test_config_splits_k_only_until_the_gpu_is_full():
    assert gemv_config(1, 28672, 4096)["SPLIT_K"] == 1  # 3584 column tiles fill 132 SMs
    assert gemv_config(1, 4096, 4096)["SPLIT_K"] == 1  # 1024 column tiles of 4 rows
    narrow = gemv_config(1, 512, 4096)  # a tensor-parallel shard's k/v: 128 column tiles
    assert narrow["SPLIT_K"] > 1 and 4096 // narrow["BLOCK_K"] >= 2 * narrow["SPLIT_K"]


def test_load_time_candidates_are_distinct_and_include_the_default():
    configs = gemv_candidates(4096, 4096)
    assert gemv_config(1, 4096, 4096) in configs
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs) >= 3


# (M, K, N, bias, config) without a K split: the norm needs all of K in one program.
UNSPLIT = [
    (1, 96, 12, False, dict(BLOCK_N=4, BLOCK_K=32, SPLIT_K=1, num_warps=4)),
    (1, 100, 21, True, dict(BLOCK_N=8, BLOCK_K=64, SPLIT_K=1, num_warps=4)),
    (3, 64, 9, True, dict(BLOCK_N=4, BLOCK_K=64, SPLIT_K=1, num_warps=2)),
    *gpu_cases((1, 4096, 6144, False, None), (1, 3584, 4608, True, None)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n", "bias", "config"), UNSPLIT)
def test_the_norm_in_the_k_loop_matches_the_norm_then_the_product(m, k, n, bias, config, dtype):
    gen = torch.Generator().manual_seed(k + n)
    x = (3 * torch.randn(m, k, generator=gen)).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) * k**-0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    y = dense_gemv(x, w, b, config, rms_eps=1e-6)
    torch.testing.assert_close(y, dense_gemv_ref(x, w, b, rms_eps=1e-6), **TOL[dtype])
    # The launch it replaces rounds the norm's output first: the same within that rounding.
    ones = torch.ones(k, device=DEVICE, dtype=dtype)
    two_launches = dense_gemv(rms_norm(x, ones, 1e-6), w, b, config)
    torch.testing.assert_close(y, two_launches, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n", "bias", "config"), UNSPLIT)
def test_the_residual_add_gives_the_norm_kernels_residual_bits(m, k, n, bias, config, dtype):
    gen = torch.Generator().manual_seed(k * n)
    x = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(n, k, generator=gen) * k**-0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    residual = (4 * torch.randn(m, n, generator=gen)).to(DEVICE, dtype)
    summed = dense_gemv(x, w, b, config, residual=residual)
    ones = torch.ones(n, device=DEVICE, dtype=dtype)
    _, expected = fused_add_rms_norm(dense_gemv(x, w, b, config), residual, ones, 1e-6)
    assert torch.equal(summed, expected)
    torch.testing.assert_close(summed, dense_gemv_ref(x, w, b, residual=residual), **TOL[dtype])


def test_a_norm_or_a_residual_with_a_k_split_is_refused():
    x, w = torch.randn(1, 200, device=DEVICE), torch.randn(13, 200, device=DEVICE)
    with pytest.raises(AssertionError, match="no K split"):
        dense_gemv(x, w, None, SPLIT, rms_eps=1e-6)
    with pytest.raises(AssertionError, match="no K split"):
        dense_gemv(x, w, None, SPLIT, residual=torch.zeros(1, 13, device=DEVICE))


def test_reference_norm_is_an_unweighted_rmsnorm_in_float32():
    x, w = torch.randn(2, 8), torch.randn(3, 8)
    normed = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(dense_gemv_ref(x, w, None, rms_eps=1e-5), normed @ w.T)
