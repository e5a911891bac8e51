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


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (6, None), (None, 2.0), (11, 1.5)])
@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(4, 4, 16), (8, 2, 16), (8, 1, 64)])
def test_reference_matches_engine(heads, kv_heads, block_size, window, softcap):
    """Our reference and the engine's torch prefill path compute the same attention, with a
    sliding window (over fresh prompts and chunks that start mid-sequence) and a soft cap."""
    from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
    from lmdeploy.adapters.engines.pytorch.layers.attention import AttentionOptions, paged_attention

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
    opts = AttentionOptions(0.125, window, softcap)
    engine = paged_attention(*cpu, meta, opts).to(q.device)
    args = (q, k_cache, v_cache, tables, cu, lens, max_q, 0.125)
    ref = paged_prefill_attention_ref(*args, sliding_window=window, logit_softcap=softcap)
    torch.testing.assert_close(ref, engine, **TOL[torch.float32])
    out = paged_prefill_attention(*args, sliding_window=window, logit_softcap=softcap)
    torch.testing.assert_close(out, engine, **TOL[torch.float32])


# heads, kv_heads, head_dim, block_size, [(query_len, context_len)], sliding_window
WINDOW_CASES = [
    (4, 1, 16, 16, [(1, 1), (5, 20), (17, 17)], 8),  # window under a block
    (8, 2, 32, 16, [(70, 70), (3, 131)], 20),  # two query blocks, window under BLOCK_M
    (6, 6, 32, 64, [(33, 100), (1, 64), (64, 64)], 50),  # 64-token blocks, chunk mid-sequence
    (4, 2, 16, 64, [(40, 200), (90, 90)], 100),  # window over BLOCK_M: an unmasked middle
    (4, 2, 16, 16, [(10, 30), (25, 25)], 1000),  # window longer than every context
    (4, 4, 16, 16, [(9, 40), (33, 33)], 1),  # each query sees itself only
    *gpu_cases(
        (32, 8, 128, 16, [(2048, 8192), (4096, 4096), (1, 5000)], 4096),  # Mistral-7B's window
        (16, 8, 256, 64, [(777, 5000), (1500, 1500)], 4096),  # Gemma 2's local layers
    ),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "block_size", "seqs", "window"), WINDOW_CASES
)
def test_sliding_window_matches_reference(
    heads, kv_heads, head_dim, block_size, seqs, window, dtype
):
    torch.manual_seed(3)
    args = _inputs(heads, kv_heads, head_dim, block_size, seqs, dtype)
    scale = head_dim**-0.5
    out = paged_prefill_attention(*args, scale, sliding_window=window)
    ref = paged_prefill_attention_ref(*args, scale, sliding_window=window)
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_sliding_window_never_reads_keys_before_it():
    """NaN in every slot no query of the chunk can see: a kernel that loads and masks them
    returns NaN (0 x NaN in p.v), one that skips them matches the reference."""
    torch.manual_seed(4)
    seqs, window, block_size = [(20, 150), (6, 40)], 33, 16
    args = _inputs(4, 2, 16, block_size, seqs, torch.float32)
    _, k_cache, v_cache, tables = args[:4]
    ref = paged_prefill_attention_ref(*args, 0.25, sliding_window=window)
    for i, (q_len, ctx_len) in enumerate(seqs):
        stale = slots_of(tables, block_size, i, torch.arange(max(ctx_len - q_len - window + 1, 0)))
        k_cache.view(-1, 2, 16)[stale] = float("nan")
        v_cache.view(-1, 2, 16)[stale] = float("nan")
    out = paged_prefill_attention(*args, 0.25, sliding_window=window)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 12])
def test_logit_softcap_matches_reference(window, dtype):
    """scale 1 makes the raw scores large, so a cap of 5 changes the softmax a lot."""
    torch.manual_seed(5)
    args = _inputs(8, 2, 32, 16, [(40, 40), (7, 50)], dtype)
    out = paged_prefill_attention(*args, 1.0, window, 5.0)
    ref = paged_prefill_attention_ref(*args, 1.0, window, 5.0)
    uncapped = paged_prefill_attention_ref(*args, 1.0, window)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    assert not torch.allclose(ref.float(), uncapped.float(), atol=1e-2)


def test_reference_window_is_transformers_sliding_window():
    """The off-by-one anchor: our reference's window is transformers' sliding-window mask
    (`kv_idx > q_idx - sliding_window`, on top of causal), the one Mistral and Gemma 2 use."""
    masking_utils = pytest.importorskip("transformers.masking_utils")
    torch.manual_seed(6)
    q_len, ctx_len, window = 6, 20, 5
    q, k_cache, v_cache, tables, cu, lens, max_q = _inputs(
        2, 2, 16, 16, [(q_len, ctx_len)], torch.float32
    )
    allowed = masking_utils.sliding_window_causal_mask_function(window)
    q_idx = torch.arange(ctx_len - q_len, ctx_len)[:, None]
    mask = allowed(torch.tensor(0), torch.tensor(0), q_idx, torch.arange(ctx_len)[None, :])
    pos = torch.arange(ctx_len, device=DEVICE)
    k = k_cache[tables[0, pos // 16].long(), pos % 16].float()
    v = v_cache[tables[0, pos // 16].long(), pos % 16].float()
    scores = torch.einsum("thd,nhd->htn", q.float(), k) * 0.25
    scores = scores.masked_fill(~mask.to(DEVICE), float("-inf"))
    expected = torch.einsum("htn,nhd->thd", scores.softmax(-1), v)
    ref = paged_prefill_attention_ref(q, k_cache, v_cache, tables, cu, lens, max_q, 0.25, window)
    torch.testing.assert_close(ref, expected, **TOL[torch.float32])
    # Each query sees exactly `window` keys here: the mask is not a trivially causal one.
    assert mask.sum(-1).tolist() == [window] * q_len


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sliding_window": -4}, "sliding_window"),
    ({"logit_softcap": -1.0}, "logit_softcap"),
])  # fmt: skip
def test_rejects_meaningless_options(kwargs, match):
    args = _inputs(4, 2, 16, 16, [(3, 3)], torch.float32)
    with pytest.raises(ValueError, match=match):
        paged_prefill_attention(*args, 0.25, **kwargs)


def quantize_cache(cache: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    return quantize_kv_ref(cache, bits)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size", "seqs"), CASES[:3])
def test_quantized_cache_matches_reference(
    heads, kv_heads, head_dim, block_size, seqs, dtype, bits
):
    """Dequantised on load: the reference attends over the whole cache dequantised first."""
    torch.manual_seed(5)
    q, k_cache, v_cache, *rest = _inputs(heads, kv_heads, head_dim, block_size, seqs, dtype)
    k_q, k_sz = quantize_cache(k_cache, bits)
    v_q, v_sz = quantize_cache(v_cache, bits)
    quant = dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits)
    scale = head_dim**-0.5
    out = paged_prefill_attention(q, k_q, v_q, *rest, scale, **quant)
    ref = paged_prefill_attention_ref(q, k_q, v_q, *rest, scale, **quant)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    # And the quantized cache is close to the float one it came from.
    exact = paged_prefill_attention_ref(q, k_cache, v_cache, *rest, scale)
    assert (out - exact).abs().max() < (0.05 if bits == 8 else 0.6)
