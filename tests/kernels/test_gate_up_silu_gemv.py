"""SwiGLU's gate/up projection with its activation in one launch, against the two kernels it
replaces (the dense GEMV, then SiLU-and-mul) and against plain torch math."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.dense_gemv import dense_gemv, dense_gemv_ref
from lmdeploy.kernels.gate_up_silu_gemv import gate_up_silu_gemv
from lmdeploy.kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref

from ._util import DEVICE, gpu_cases

# (tokens, inter, K, bias, GEMV tiles, dtype): K not a multiple of the tile, up to 4 rows.
CASES = [
    (1, 24, 96, False, dict(BLOCK_N=4, BLOCK_K=32, num_warps=4), torch.float32),
    (1, 20, 100, True, dict(BLOCK_N=8, BLOCK_K=64, num_warps=4), torch.float32),
    (4, 6, 64, True, dict(BLOCK_N=4, BLOCK_K=64, num_warps=2), torch.float32),
    *gpu_cases(
        (1, 14336, 4096, False, None, torch.bfloat16),
        (1, 18944, 3584, False, dict(BLOCK_N=4, BLOCK_K=512, num_warps=2), torch.bfloat16),
        (2, 1024, 2048, True, dict(BLOCK_N=8, BLOCK_K=256, num_warps=4), torch.float16),
    ),
]


def _inputs(tokens, inter, k, bias, dtype):
    gen = torch.Generator(device="cpu").manual_seed(tokens * k + inter)
    x = torch.randn(tokens, k, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(2 * inter, k, generator=gen) * k**-0.5).to(DEVICE, dtype)
    b = torch.randn(2 * inter, generator=gen).to(DEVICE, dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize(("tokens", "inter", "k", "bias", "config", "dtype"), CASES)
@pytest.mark.parametrize("with_norm", [False, True])
def test_one_launch_equals_the_gemv_then_silu_and_mul(
    tokens, inter, k, bias, config, dtype, with_norm
):
    x, w, b = _inputs(tokens, inter, k, bias, dtype)
    rms_eps = 1e-5 if with_norm else None
    out = gate_up_silu_gemv(x, w, b, config, rms_eps)
    assert out.shape == (tokens, inter) and out.dtype == dtype
    # Same sums in the same order, rounded where the two launches store: equal bits.
    gemv_config = None if config is None else dict(config, SPLIT_K=1)
    assert torch.equal(out, silu_and_mul(dense_gemv(x, w, b, gemv_config, rms_eps=rms_eps)))


@pytest.mark.parametrize(("tokens", "inter", "k", "bias", "config", "dtype"), CASES[:3])
def test_one_launch_matches_torch(tokens, inter, k, bias, config, dtype):
    x, w, b = _inputs(tokens, inter, k, bias, dtype)
    expected = silu_and_mul_ref(dense_gemv_ref(x, w, b))
    torch.testing.assert_close(gate_up_silu_gemv(x, w, b, config), expected)


def test_a_tile_that_would_split_a_gate_up_pair_is_refused():
    x, w, b = _inputs(1, 6, 32, False, torch.float32)
    with pytest.raises(AssertionError, match="whole pairs"):
        gate_up_silu_gemv(x, w, b, dict(BLOCK_N=8, BLOCK_K=32, num_warps=4))
