"""The q/k/v projection with its rotary and cache write in one launch, against the three steps it
replaces (the dense GEMV, then the rotary kernel writing k and v to the cache) and against plain
torch math."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.dense_gemv import dense_gemv, dense_gemv_ref
from lmdeploy.kernels.qkv_rotary_gemv import qkv_rotary_gemv
from lmdeploy.kernels.rotary import rotary, rotary_ref

from ._util import DEVICE, gpu_cases

BLOCKS, BLOCK_SIZE = 6, 4

# (tokens, (heads, kv_heads, dim), K, bias, GEMV tiles, dtype); slot -1 marks a padding row.
CASES = [
    (1, (4, 2, 16), 96, False, dict(BLOCK_N=4, BLOCK_K=32, num_warps=4), torch.float32),
    (1, (4, 1, 32), 100, True, dict(BLOCK_N=8, BLOCK_K=64, num_warps=4), torch.float32),
    (3, (2, 2, 8), 64, True, dict(BLOCK_N=4, BLOCK_K=64, num_warps=2), torch.float32),
    *gpu_cases(
        (1, (32, 8, 128), 4096, False, None, torch.bfloat16),
        (1, (28, 4, 128), 3584, True, dict(BLOCK_N=8, BLOCK_K=256, num_warps=4), torch.bfloat16),
        (2, (32, 8, 128), 4096, True, dict(BLOCK_N=4, BLOCK_K=512, num_warps=2), torch.float16),
    ),
]


def _inputs(tokens, heads, k, bias, dtype, seed):
    num_heads, num_kv_heads, dim = heads
    n = (num_heads + 2 * num_kv_heads) * dim
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    x, w = randn(tokens, k), randn(n, k) * k**-0.5
    b = randn(n) if bias else None
    angles = torch.rand(tokens, dim // 2, generator=gen, dtype=torch.float64) * 6.3
    cos = torch.cat([angles.cos()] * 2, dim=-1).float().to(DEVICE)
    sin = torch.cat([angles.sin()] * 2, dim=-1).float().to(DEVICE)
    cache = randn(BLOCKS, BLOCK_SIZE, num_kv_heads, dim)
    slots = torch.randperm(BLOCKS * BLOCK_SIZE, generator=gen)[:tokens]
    if tokens > 1:
        slots[1] = -1
    return x, w, b, cos, sin, (cache, cache.clone() + 1), slots.to(DEVICE)


@pytest.mark.parametrize(("tokens", "heads", "k", "bias", "config", "dtype"), CASES)
@pytest.mark.parametrize("with_norm", [False, True])
def test_one_launch_equals_the_gemv_then_the_rotary_kernel(
    tokens, heads, k, bias, config, dtype, with_norm
):
    x, w, b, cos, sin, (k_cache, v_cache), slots = _inputs(tokens, heads, k, bias, dtype, k)
    num_heads, num_kv_heads, dim = heads
    rms_eps = 1e-6 if with_norm else None
    fused_k, fused_v = k_cache.clone(), v_cache.clone()
    q = qkv_rotary_gemv(x, w, b, heads, cos, sin, fused_k, fused_v, slots, config, rms_eps)

    gemv_config = None if config is None else dict(config, SPLIT_K=1)
    qkv = dense_gemv(x, w, b, gemv_config, rms_eps=rms_eps)
    q_ref, k_new, v_new = (
        part.view(tokens, -1, dim)
        for part in qkv.split([num_heads * dim, num_kv_heads * dim, num_kv_heads * dim], -1)
    )
    rotary(q_ref, k_new, cos, sin, inplace=True, kv_write=(v_new, k_cache, v_cache, slots))

    assert q.shape == (tokens, num_heads, dim) and q.dtype == dtype
    # Same sums in the same order, rounded where the unfused path stores: equal bits.
    assert torch.equal(q, q_ref)
    assert torch.equal(fused_k, k_cache) and torch.equal(fused_v, v_cache)


@pytest.mark.parametrize(("tokens", "heads", "k", "bias", "config", "dtype"), CASES[:3])
def test_q_and_the_written_slots_match_torch(tokens, heads, k, bias, config, dtype):
    x, w, b, cos, sin, (k_cache, v_cache), slots = _inputs(tokens, heads, k, bias, dtype, 7)
    num_heads, num_kv_heads, dim = heads
    before_k, before_v = k_cache.clone(), v_cache.clone()
    q = qkv_rotary_gemv(x, w, b, heads, cos, sin, k_cache, v_cache, slots, config)

    qkv = dense_gemv_ref(x, w, b).view(tokens, -1, dim)
    q_ref, k_ref = rotary_ref(
        qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads], cos, sin
    )
    v_ref = qkv[:, num_heads + num_kv_heads :]
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    expected_k, expected_v = before_k.flatten(0, 1), before_v.flatten(0, 1)
    for row, slot in enumerate(slots.tolist()):
        if slot >= 0:  # a padding row (-1) writes nothing
            expected_k[slot], expected_v[slot] = k_ref[row], v_ref[row]
    torch.testing.assert_close(k_cache.flatten(0, 1), expected_k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_cache.flatten(0, 1), expected_v, atol=1e-5, rtol=1e-5)


def test_a_tile_that_would_split_a_rotate_half_pair_is_refused():
    x, w, b, cos, sin, (k_cache, v_cache), slots = _inputs(
        1, (2, 1, 4), 32, False, torch.float32, 0
    )
    with pytest.raises(AssertionError, match="must divide head_dim"):
        qkv_rotary_gemv(
            x, w, b, (2, 1, 4), cos, sin, k_cache, v_cache, slots, dict(BLOCK_N=8, BLOCK_K=32)
        )


def test_a_quantized_cache_is_refused():
    x, w, b, cos, sin, (k_cache, v_cache), slots = _inputs(
        1, (2, 1, 8), 32, False, torch.float32, 0
    )
    codes = k_cache.to(torch.uint8)
    with pytest.raises(AssertionError, match="unquantized cache"):
        qkv_rotary_gemv(x, w, b, (2, 1, 8), cos, sin, codes, codes, slots)
