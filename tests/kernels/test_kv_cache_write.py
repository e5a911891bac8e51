"""Writing new K/V into the paged cache by slot, padding slots (-1) skipped."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.kv_cache_write import kv_cache_write, kv_cache_write_ref

from ._util import DEVICE, DTYPES, gpu_cases

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
