"""Varlen paged prefill attention against its torch reference and the engine's torch path."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmdeploy.kernels.paged_prefill_attention import (
    paged_prefill_attention,
    paged_prefill_attention_ref,
)

from ._util import DEVICE, DTYPES, TOL, gpu_cases, random_paged_cache, slots_of

# heads, kv_heads, head_dim, block_size, [(query_len, context_len) per sequence]
CASES = [
    (4, 1, 16, 16, [(1, 1), (5, 20), (17, 17)]),  # GQA 4; decode row, prefix, fresh prompt
    (8, 2, 64, 16, [(70, 70), (3, 131)]),  # GQA 4; two query blocks, short chunk of a long one
    (6, 6, 32, 64, [(33, 100), (1, 64), (64, 64)]),  # MHA; heads not a power of two
    (8, 1, 128, 64, [(20, 50), (16, 16), (1, 128)]),  # GQA 8, dim 128, exact boundaries
    *gpu_cases(
        (32, 8, 128, 16, [(1024, 1024), (300, 4096), (1, 2000), (777, 800)]),
        (32, 8, 128, 64, [(512, 3000), (2048, 2048), (65, 65)]),
        (28, 4, 128, 16, [(129, 129)] * 12),
        (14, 2, 64, 64, [(1000, 1500), (64, 64)]),
    ),
]


def _inputs(heads, kv_heads, head_dim, block_size, seqs, dtype, table_dtype=torch.int32):
    q_lens = [q for q, _ in seqs]
    k_cache, v_cache, tables, context_lens = random_paged_cache(
        [c for _, c in seqs], kv_heads, head_dim, block_size, dtype, table_dtype
    )
    cu = torch.tensor(list(itertools.accumulate(q_lens, initial=0)), dtype=torch.int32)
    q = torch.randn(sum(q_lens), heads, head_dim, dtype=dtype, device=DEVICE)
    return q, k_cache, v_cache, tables, cu.to(DEVICE), context_lens, max(q_lens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size", "seqs"), CASES)
def test_matches_reference(heads, kv_heads, head_dim, block_size, seqs, dtype):
    torch.manual_seed(0)
    table_dtype = torch.int64 if heads % 3 == 0 else torch.int32
    args = _inputs(heads, kv_heads, head_dim, block_size, seqs, dtype, table_dtype)
    scale = head_dim**-0.5
    out = paged_prefill_attention(*args, scale)
    ref = paged_prefill_attention_ref(*args, scale)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_strided_query_and_empty_sequence():
    """q as a slice of a fused qkv output; a sequence with no new tokens writes nothing."""
    torch.manual_seed(1)
    seqs = [(9, 30), (0, 5), (4, 4)]
    _, k_cache, v_cache, tables, cu, lens, max_q = _inputs(8, 2, 32, 16, seqs, torch.float32)
    qkv = torch.randn(13, 12 * 32, device=DEVICE)
    q = qkv[:, : 8 * 32].view(13, 8, 32)
    out = paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, max_q, 0.2)
    ref = paged_prefill_attention_ref(
        q.contiguous(), k_cache, v_cache, tables, cu, lens, max_q, 0.2
    )
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(4, 4, 16), (8, 2, 16), (8, 1, 64)])
def test_reference_matches_engine(heads, kv_heads, block_size):
    """Our reference and the engine's torch prefill path compute the same attention."""
    from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
    from lmdeploy.adapters.engines.pytorch.layers.attention import paged_attention

    torch.manual_seed(2)
    seqs = [(7, 7), (5, block_size + 9), (1, 2 * block_size)]
    q, k_cache, v_cache, tables, cu, lens, max_q = _inputs(
        heads, kv_heads, 64, block_size, seqs, torch.float32, torch.int64
    )
    # The engine writes the new tokens first: hand it the ones already in the cache.
    slots = torch.cat(
        [slots_of(tables, block_size, i, range(c - n, c)) for i, (n, c) in enumerate(seqs)]
    )
    k_new = k_cache.flatten(0, 1)[slots].clone()
    v_new = v_cache.flatten(0, 1)[slots].clone()
    # The torch path is the CPU engine's (on CUDA the engine takes the kernels): run it there.
    meta = AttentionMetadata(
        slot_mapping=slots.cpu(),
        block_tables=tables.cpu(),
        context_lens=lens.long().cpu(),
        query_lens=[n for n, _ in seqs],
        context_lens_list=[c for _, c in seqs],
        is_decode=False,
        num_cached_list=[c - n for n, c in seqs],
    )
    cpu = [t.cpu() for t in (q, k_new, v_new, k_cache, v_cache)]
    engine = paged_attention(*cpu, meta, 0.125).to(q.device)
    ref = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, lens, max_q, 0.125)
    torch.testing.assert_close(ref, engine, **TOL[torch.float32])
    out = paged_prefill_attention(q, k_cache, v_cache, tables, cu, lens, max_q, 0.125)
    torch.testing.assert_close(out, engine, **TOL[torch.float32])
