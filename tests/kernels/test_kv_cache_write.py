"""Writing new K/V into the paged cache by slot, padding slots (-1) skipped."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.kv_cache_write import kv_cache_write, kv_cache_write_ref

from ._util import DEVICE, DTYPES, TOL, gpu_cases

# num_tokens, kv_heads, head_dim, block_size, num_blocks
CASES = [
    (1, 1, 16, 16, 2),
    (13, 3, 64, 16, 5),
    (7, 8, 128, 64, 3),
    (30, 5, 32, 64, 4),
    *gpu_cases((4096, 8, 128, 16, 400), (1000, 2, 64, 64, 40)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "kv_heads", "head_dim", "block_size", "num_blocks"), CASES)
def test_matches_reference(num_tokens, kv_heads, head_dim, block_size, num_blocks, dtype):
    torch.manual_seed(0)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    v_cache = torch.randn(shape, dtype=dtype, device=DEVICE)
    k = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    v = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[::4] = -1  # padding tokens
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv_cache_write(k, v, k_cache, v_cache, slots)
    kv_cache_write_ref(k, v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_strided_inputs_and_int32_slots():
    """k, v as slices of a fused qkv output; slots as int32."""
    torch.manual_seed(1)
    k_cache = torch.randn(3, 16, 2, 32, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    qkv = torch.randn(9, (4 + 2 + 2) * 32, device=DEVICE)
    k = qkv[:, 4 * 32 : 6 * 32].view(9, 2, 32)
    v = qkv[:, 6 * 32 :].view(9, 2, 32)
    slots = torch.tensor([0, 47, 16, -1, 5, 31, 32, -1, 1], dtype=torch.int32, device=DEVICE)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv_cache_write(k, v, k_cache, v_cache, slots)
    kv_cache_write_ref(k, v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_reference_matches_engine():
    from lmdeploy.adapters.engines.pytorch.backends.torch_native.attention import write_kv

    torch.manual_seed(2)
    k_cache = torch.randn(4, 16, 3, 64, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    k, v = torch.randn(10, 3, 64, device=DEVICE), torch.randn(10, 3, 64, device=DEVICE)
    slots = torch.randperm(64, device=DEVICE)[:10]
    k_eng, v_eng = k_cache.clone(), v_cache.clone()
    write_kv(k_eng, v_eng, k, v, slots)
    kv_cache_write(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_eng) and torch.equal(v_cache, v_eng)


def _quantized_caches(num_blocks, block_size, kv_heads, head_dim, bits, dtype):
    from lmdeploy.kernels.kv_quant import packed_dim

    shape = (num_blocks, block_size, kv_heads, packed_dim(head_dim, bits))
    caches = [torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE) for _ in range(2)]
    sz = [torch.rand(*shape[:3], 2, dtype=dtype, device=DEVICE) for _ in range(2)]
    return caches, sz


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "kv_heads", "head_dim", "block_size", "num_blocks"), CASES)
def test_quantized_write_matches_reference(
    num_tokens, kv_heads, head_dim, block_size, num_blocks, dtype, bits
):
    """Same bytes as the reference (a rounding tie may land one step apart) and the same
    (scale, zero) pairs; slots not written keep their noise."""
    torch.manual_seed(3)
    (k_cache, v_cache), (k_sz, v_sz) = _quantized_caches(
        num_blocks, block_size, kv_heads, head_dim, bits, dtype
    )
    k = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE) * 3
    v = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    k[0, 0] = 0.5  # a constant head: scale falls back to 1
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[1::4] = -1
    refs = [t.clone() for t in (k_cache, v_cache, k_sz, v_sz)]
    kv_cache_write(k, v, k_cache, v_cache, slots, k_sz, v_sz, bits)
    kv_cache_write_ref(k, v, refs[0], refs[1], slots, refs[2], refs[3], bits)
    for got, want in zip((k_cache, v_cache), refs[:2], strict=True):
        if bits == 4:
            got, want = torch.cat([got & 15, got >> 4], -1), torch.cat([want & 15, want >> 4], -1)
        assert (got.int() - want.int()).abs().max() <= 1
        assert (got != want).float().mean() < 0.01
    torch.testing.assert_close(k_sz, refs[2], **TOL[dtype])
    torch.testing.assert_close(v_sz, refs[3], **TOL[dtype])


def test_int8_error_is_within_half_a_step():
    from lmdeploy.kernels.kv_quant import dequantize_kv_ref, quantize_kv_ref

    torch.manual_seed(4)
    x = torch.randn(50, 3, 64) * torch.rand(50, 3, 1) * 10
    q, sz = quantize_kv_ref(x, 8)
    assert q.dtype == torch.uint8 and q.shape == (50, 3, 64)
    back = dequantize_kv_ref(q, sz, 8, torch.float32)
    step = sz[..., 0:1]
    assert ((back - x).abs() <= step * 0.5 + 1e-5).all()
    const = torch.full((1, 1, 8), -2.5)
    assert torch.equal(dequantize_kv_ref(*quantize_kv_ref(const, 8), 8, torch.float32), const)


def test_int4_keeps_the_range_that_reads_back_closest():
    """Against plain min/max rounding: never a larger squared error, and a smaller one on most
    vectors with an outlier dim (its range shrinks: the other dims get finer steps)."""
    from lmdeploy.kernels.kv_quant import dequantize_kv_ref, quantize_kv_ref

    torch.manual_seed(4)
    x = torch.randn(50, 3, 64)
    x[:, :, 5] *= 4
    q, sz = quantize_kv_ref(x, 4)
    assert q.dtype == torch.uint8 and q.shape == (50, 3, 32)
    err = (dequantize_kv_ref(q, sz, 4, torch.float32) - x).square().sum(-1)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = (hi - lo) / 15
    minmax = (torch.floor((x - lo) / scale + 0.5) * scale + lo - x).square().sum(-1)
    assert (err <= minmax * (1 + 1e-5)).all()
    assert (err < minmax * 0.95).float().mean() > 0.5
    assert err.sum() < 0.95 * minmax.sum()
    const = torch.full((1, 1, 8), -2.5)
    assert torch.equal(dequantize_kv_ref(*quantize_kv_ref(const, 4), 4, torch.float32), const)
