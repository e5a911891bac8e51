"""A step that mixes one-token decodes with longer queries, on the CUDA backend: the decode
rows run in the decode kernel and the rest in the prefill kernel, and together they equal the
reference over the whole batch (Triton's interpreter runs the kernels on the CPU in CI)."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
from lmdeploy.adapters.engines.pytorch.backends.cuda.attention import paged_attention_cuda
from lmdeploy.adapters.engines.pytorch.layers.attention import split_mixed_step
from lmdeploy.kernels.kv_quant import dequantize_kv_ref, quantize_kv_ref
from lmdeploy.kernels.paged_prefill_attention import paged_prefill_attention_ref

from ._util import DEVICE, DTYPES, TOL, random_paged_cache, slots_of


@pytest.mark.parametrize("bits", [0, 8, 4])  # a float cache, then int8 and int4 (quant_policy)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "seqs",  # (query_len, context_len): decodes interleaved with prompts and chunks
    [[(1, 9), (6, 6), (1, 40), (1, 17), (20, 33)], [(5, 5), (1, 3)], [(1, 64), (64, 64)]],
)
def test_split_equals_the_whole_batch_reference(seqs, dtype, bits):
    torch.manual_seed(len(seqs))
    heads, kv_heads, head_dim, block_size = 8, 2, 32, 16
    q_lens, ctx_lens = [q for q, _ in seqs], [c for _, c in seqs]
    k_cache, v_cache, tables, lens = random_paged_cache(
        ctx_lens, kv_heads, head_dim, block_size, dtype, torch.int64
    )
    slots = torch.cat(
        [slots_of(tables, block_size, i, range(c - q, c)) for i, (q, c) in enumerate(seqs)]
    )
    tokens = sum(q_lens)
    q = torch.randn(tokens, heads, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    v = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables,
        context_lens=lens,
        query_lens=q_lens,
        context_lens_list=ctx_lens,
        is_decode=False,
        num_cached_list=[c - q for q, c in seqs],
    )
    cu = torch.tensor(list(itertools.accumulate(q_lens, initial=0)), device=DEVICE)
    meta.cu_seqlens_q, meta.max_query_len = cu, max(q_lens)
    split_mixed_step(meta)
    assert meta.prefill_part is not None
    assert meta.decode_rows.tolist() == [int(cu[i]) for i, n in enumerate(q_lens) if n == 1]
    scale = head_dim**-0.5
    scale_zero = None
    if bits:
        (k_cache, k_sz), (v_cache, v_sz) = (
            quantize_kv_ref(k_cache, bits),
            quantize_kv_ref(v_cache, bits),
        )
        scale_zero = (k_sz, v_sz)
    out = paged_attention_cuda(q, k, v, k_cache, v_cache, meta, scale, scale_zero=scale_zero)
    if bits:  # the reference reads the float values the quantized cache stands for
        k_cache = dequantize_kv_ref(k_cache, scale_zero[0], bits, dtype)
        v_cache = dequantize_kv_ref(v_cache, scale_zero[1], bits, dtype)
    # the new K/V are in the caches now: the reference reads them there
    want = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, lens, max(q_lens), scale)
    torch.testing.assert_close(out, want, **TOL[dtype])
