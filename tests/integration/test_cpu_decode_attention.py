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


@pytest.mark.parametrize(
    "lens,heads,kv_heads,block_size,window",
    [
        ([1, 17, 64, 65, 300], 9, 3, 16, 16),  # a window of one block
        ([5, 129, 1000], 8, 8, 64, 100),  # a window not a multiple of the block
        ([3 + 19 * i for i in range(16)], 9, 3, 64, 37),  # one work item per sequence
        ([7, 2], 4, 1, 5, 4096),  # a window longer than every context
        ([40, 1], 4, 2, 16, 1),  # the query's own key only
    ],
)
def test_sliding_window_equals_reference(lens, heads, kv_heads, block_size, window):
    q, k_cache, v_cache, tables, ctx = _case(3, lens, heads, kv_heads, 64, block_size)
    out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, ctx, 0.125, window)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, 0.125, window)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_sliding_window_never_reads_keys_before_it():
    """NaN in every slot before the window: the kernel must not read it (0 x NaN is NaN)."""
    lens, window, block_size = [100, 37, 5], 21, 16
    q, k_cache, v_cache, tables, ctx = _case(4, lens, 8, 2, 64, block_size)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, 0.125, window)
    for i, n in enumerate(lens):
        pos = torch.arange(max(n - window, 0))
        stale = tables[i, pos // block_size] * block_size + pos % block_size
        k_cache.view(-1, 2, 64)[stale] = float("nan")
        v_cache.view(-1, 2, 64)[stale] = float("nan")
    out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, ctx, 0.125, window)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 30])
def test_logit_softcap_equals_reference(window):
    """scale 1 makes the raw scores large, so a cap of 5 changes the softmax a lot."""
    q, k_cache, v_cache, tables, ctx = _case(5, [1, 33, 70, 200], 8, 2, 64, 16)
    out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, ctx, 1.0, window, 5.0)
    expected = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, 1.0, window, 5.0)
    uncapped = paged_decode_attention_ref(q, k_cache, v_cache, tables, ctx, 1.0, window)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(expected, uncapped, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"sliding_window": 0}, "sliding_window"), ({"logit_softcap": 0.0}, "logit_softcap")],
)
def test_rejects_meaningless_options(kwargs, match):
    q, k_cache, v_cache, tables, ctx = _case(6, [10], 4, 2, 64, 16)
    with pytest.raises(ValueError, match=match):
        paged_decode_attention_cpu(q, k_cache, v_cache, tables, ctx, 1.0, **kwargs)
