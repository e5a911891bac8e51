"""The C decode-attention kernel for the CPU against the torch path and the kernels' reference."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu.attention import (
    cpu_decode_kernel_available,
    paged_decode_attention_cpu,
)
from lmdeploy.adapters.engines.pytorch.backends.torch_native.attention import (
    decode_attention_torch,
    decode_context,
)
from lmdeploy.kernels.paged_decode_attention import paged_decode_attention_ref

pytestmark = pytest.mark.skipif(
    not cpu_decode_kernel_available(), reason="no C compiler: the CPU path uses torch ops"
)


def _case(seed, lens, heads, kv_heads, head_dim, block_size):
    g = torch.Generator().manual_seed(seed)
    max_blocks = -(-max(lens) // block_size)
    num_blocks = len(lens) * max_blocks + 3
    # Each sequence gets a random, non-contiguous set of blocks; padding entries are 0.
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lens), max_blocks, dtype=torch.int64)
    for i, n in enumerate(lens):
        need = -(-n // block_size)
        tables[i, :need] = perm[i * max_blocks : i * max_blocks + need]
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g)
    v_cache = torch.randn(shape, generator=g)
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int64)


@pytest.mark.parametrize(
    "lens,heads,kv_heads,head_dim,block_size",
    [
        ([1, 17, 64, 65, 300], 9, 3, 64, 16),  # SmolLM2's GQA 3, block boundaries
        ([5, 129, 1000], 8, 8, 128, 64),  # no GQA, head_dim 128
        ([33, 2, 77, 250, 16, 9, 120], 32, 8, 64, 32),  # GQA 4
        ([7], 4, 1, 80, 5),  # MQA, odd head_dim and block size
        # A batch of 16: one work item per sequence (the cases above with fewer sequences than
        # twice the threads take one item per (sequence, KV head)).
        ([3 + 19 * i for i in range(16)], 9, 3, 64, 64),
    ],
)
def test_equals_torch_path_and_reference(lens, heads, kv_heads, head_dim, block_size):
    q, k_cache, v_cache, tables, ctx = _case(0, lens, heads, kv_heads, head_dim, block_size)
    scale = head_dim**-0.5
    out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, ctx, scale)
    assert out is not None
    slots, valid = decode_context(tables, ctx, max(lens), block_size)
    torch_path = decode_attention_torch(q, k_cache, v_cache, slots, valid, scale)
    reference = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, scale)
    torch.testing.assert_close(out, torch_path, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-5)


def test_strided_queries_as_the_model_passes_them():
    """q is a slice of the fused q|k rotary output: token stride > heads x dim."""
    q, k_cache, v_cache, tables, ctx = _case(1, [40, 3, 90], 9, 3, 64, 16)
    fused = torch.cat([q, torch.randn(3, 3, 64)], dim=1)
    strided = fused[:, :9]
    assert not strided.is_contiguous()
    out = paged_decode_attention_cpu(strided, k_cache, v_cache, tables, ctx, 0.125)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, 0.125)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_declines_what_it_does_not_take():
    q, k_cache, v_cache, tables, ctx = _case(2, [10, 20], 4, 2, 64, 16)
    half = paged_decode_attention_cpu(q.bfloat16(), k_cache.bfloat16(), v_cache, tables, ctx, 1.0)
    assert half is None
