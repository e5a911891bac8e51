"""The dense decode GEMV against its reference (plain multiply-add, so bf16 runs under the
interpreter too), and the reference against plain math."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.dense_gemv import dense_gemv, dense_gemv_ref, gemv_candidates, gemv_config

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
