"""The stream-K dense GEMM against its reference: ragged rows and columns, K not a multiple of
the tile, bias, each dtype, pointer and TMA (tensor-descriptor) loads, stream-K shares that cut
tiles unevenly, the data-parallel + stream-K hybrid, the plain tiled path, and bit-identical
repeats. Tiles are small and the persistent grid
a few programs, so the interpreter runs each case in well under a second."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lmdeploy.kernels.dense_gemm import (
    dense_gemm,
    dense_gemm_ref,
    gemm_candidates,
    gemm_config,
    stream_k_tiles,
)

from ._util import DEVICE, ON_CUDA, cuda_only

TOL = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 6e-2, "rtol": 2e-2},
}
SMALL = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=2)
WIDE = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=2)


@pytest.fixture(scope="module", autouse=True)
def bfloat16_dots_under_the_interpreter():
    """Triton's interpreter holds bfloat16 as uint16 and multiplies the raw integers in
    `tl.dot` (numpy has no bfloat16); widen them to the float32 they stand for, exactly, so the
    bfloat16 path runs here as it does on the GPU (products of bfloat16 are exact in fp32)."""
    if ON_CUDA or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        bits = h.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot
    yield
    interpreter.InterpreterBuilder.create_dot = original


# (M, K, N, bias, config, num_sms, stream_k); the comments count tiles x K iterations.
CASES = [
    (16, 64, 48, True, SMALL, 4, True),  # 3 x 4 over 4: shares of 3 cut every tile
    (37, 80, 50, False, SMALL, 5, True),  # ragged M, N; 12 tiles: 5 whole + 7 x 5 over 5
    (21, 72, 40, True, WIDE, 2, True),  # K = 2.25 tiles (the last masked): 3 x 3 over 2
    (40, 128, 24, True, SMALL, 5, True),  # 6 x 8 = 48 over 5: 10, 10, 10, 9, 9
    (18, 128, 16, False, SMALL, 5, True),  # 2 x 8 over 5: shares inside one tile, 3 owners
    (16, 32, 16, True, SMALL, 5, True),  # 1 x 2: two programs, not five
    (48, 64, 56, True, SMALL, 3, None),  # 12 tiles, 4 whole waves of 3: tiled
    (50, 48, 45, True, SMALL, 5, True),  # 12 tiles: 5 whole + 7 x 3 over 5 (the hybrid)
    (33, 96, 70, False, SMALL, 4, None),  # 15 tiles: 8 whole + 7 x 6 over 4, chosen
    (29, 80, 33, True, SMALL, 4, False),  # the plain tiled path, a program a tile
]


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n", "bias", "config", "num_sms", "stream_k"), CASES)
def test_dense_gemm_matches_reference(m, k, n, bias, config, num_sms, stream_k, dtype, tma):
    torch.manual_seed(m * k + n)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    y = dense_gemm(x, w, b, config, stream_k=stream_k, num_sms=num_sms, tma=tma)
    assert y.shape == (m, n) and y.dtype == dtype
    torch.testing.assert_close(y, dense_gemm_ref(x, w, b), **TOL[dtype])


@cuda_only
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("m", [64, 256])
def test_every_hopper_candidate_compiles_and_matches_on_a_decode_shape(m, tma):
    """The benchmark's tiles on Llama-3-8B's q/k/v at decode rows, both schedules, with the
    GPU's own SM count: they fit the shared memory and sum right at full size."""
    torch.manual_seed(m)
    x = torch.randn(m, 4096, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(6144, 4096, device=DEVICE, dtype=torch.bfloat16) / 64
    b = torch.randn(6144, device=DEVICE, dtype=torch.bfloat16)
    expected = dense_gemm_ref(x, w, b)
    for config in gemm_candidates(m):
        for stream_k in (True, False):
            y = dense_gemm(x, w, b, config, stream_k=stream_k, tma=tma)
            torch.testing.assert_close(y, expected, **TOL[torch.bfloat16])


def test_stream_k_sums_are_bit_identical_and_leave_the_counters_zero():
    """Cut tiles are summed in program order whichever program finishes last, and the last
    one resets its counter: a repeat (a CUDA graph replay) reduces again, identically."""
    from lmdeploy.kernels.w4a16_gemm import _split_counters

    torch.manual_seed(7)
    x = torch.randn(37, 128, device=DEVICE).to(torch.float16)
    w = torch.randn(50, 128, device=DEVICE).to(torch.float16)
    first = dense_gemm(x, w, None, SMALL, stream_k=True, num_sms=7)
    assert int(_split_counters(x.device).abs().sum()) == 0
    assert torch.equal(dense_gemm(x, w, None, SMALL, stream_k=True, num_sms=7), first)


def test_leading_dims_and_strided_rows_are_kept():
    torch.manual_seed(8)
    x = torch.randn(2, 9, 96, device=DEVICE)[..., 16:80]  # rows of a wider buffer
    w = torch.randn(20, 64, device=DEVICE)
    y = dense_gemm(x, w, None, SMALL, stream_k=True, num_sms=3)
    assert y.shape == (2, 9, 20)
    torch.testing.assert_close(y, dense_gemm_ref(x, w), **TOL[torch.float32])


def test_reference_is_x_times_w_transposed_plus_bias():
    x, w, b = torch.randn(2, 6), torch.randn(3, 6), torch.randn(3)
    torch.testing.assert_close(dense_gemm_ref(x, w, b), x @ w.T + b)


def test_stream_k_covers_the_partial_waves_only():
    assert stream_k_tiles(96, 132) == 96  # qkv at 256 rows, 128 x 128 tiles: under one wave
    assert stream_k_tiles(200, 132) == 200  # under two waves: all of it
    assert stream_k_tiles(448, 132) == 448 - 2 * 132  # gate/up: last wave + one whole
    assert stream_k_tiles(264, 132) == 0  # whole waves: tiled
    assert stream_k_tiles(2004, 132) == 0  # lm_head: many waves, tiled
    assert stream_k_tiles(96, 132, stream_k=False) == 0


def test_configs_fit_the_rows():
    assert gemm_config(16)["BLOCK_M"] == 64
    assert gemm_config(256)["BLOCK_M"] == 128
    assert all(c["BLOCK_M"] <= 64 for c in gemm_candidates(48))
    assert {c["BLOCK_M"] for c in gemm_candidates(256)} == {64, 128, 256}
