"""Varlen causal prefill attention, keys and values read from the paged KV cache.

The step's new tokens arrive flattened: sequence `i` owns query rows
`cu_seqlens_q[i] : cu_seqlens_q[i + 1]` and has `context_lens[i]` tokens in the cache
`[num_blocks, block_size, kv_heads, head_dim]`, the new ones included (written before this
runs). Query `t` of a sequence with `q_len` new tokens sees keys `0 .. context_len - q_len + t`.

Grid `(cdiv(max_query_len, BLOCK_M), heads, num_seqs)`: each program takes `BLOCK_M` queries of
one head and runs a flash-attention online softmax over `BLOCK_N`-key tiles, each key's page
looked up in the block table. Tiles every query of the block may see run unmasked; only the
tiles that cross the causal diagonal pay for the mask. Query heads of one GQA group read the
same K/V tiles, which they share through L2.

Cost, for T new tokens, per-sequence q_len and ctx_len, H heads, KV kv heads, D head_dim, e bytes:
FLOPs ~= 4 * H * D * sum_i(q_len_i * (ctx_len_i - q_len_i / 2)) (q.k and p.v, causal half of
the new block); bytes >= 2 * T * H * D * e (q in, out back) + 2 * sum(ctx_len) * KV * D * e
(each K/V once, the L2 ideal; worst case every (head, query block) rereads its keys). Long
prompts are compute-bound: the target is FLOPs / ~800 TFLOP/s (bf16 on the H100).

Two options for Mistral and Gemma 2, each a constexpr branch that costs nothing when off:
`sliding_window` W lets the query at position p see keys p - W < pos <= p only (transformers'
`kv_idx > q_idx - W`). A query block then starts at the first key its earliest query sees,
so keys before it are never read, and only the tiles at the window's and the diagonal's edges
pay for the mask (ctx_len above becomes about min(ctx_len, W + q_len)).
`logit_softcap` caps the scaled scores at +-softcap through a tanh (see attention_scores.py).

A quantized cache (`quant_bits` 8 or 4, the format of kv_quant.py) is a third constexpr branch:
each K/V tile is unpacked and dequantised with its tokens' (scale, zero) as it is loaded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_scores import check_window, score_scales, soft_cap
from .kv_quant import check_quantized_caches, dequantize_kv_ref, load_kv_tile, tile_slots


@triton.jit
def _attend_tiles(
    acc,
    l_i,
    m_i,
    q,
    k_cache_ptr,
    v_cache_ptr,
    k_sz_ptr,
    v_sz_ptr,
    bt_row,
    offs_m,
    offs_n,
    offs_d,
    d_mask,
    kv_head,
    lo,
    hi,
    prefix,
    qk_scale,
    softcap_log2,
    window,
    half,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_sb,
    stride_st,
    stride_sh,
    stride_sd,
    stride_btb,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):
    """Online softmax over keys [lo, hi); with CAUSAL_MASK, also hide keys past the diagonal
    and, with SLIDING, keys that fell out of a query's window."""
    for tile in range(lo, hi, BLOCK_N):
        pos, n_mask, block, slot_in_block, kv_mask = tile_slots(
            bt_row, tile, offs_n, hi, d_mask, stride_btb, BLOCK_SIZE
        )
        k = load_kv_tile(
            k_cache_ptr, k_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask, half,
            stride_kb, stride_kt, stride_kh, stride_kd, stride_sb, stride_st, stride_sh, stride_sd,
            q.dtype, QUANT_BITS,
        )  # fmt: skip
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 domain
        if SOFTCAP:
            qk = soft_cap(qk, softcap_log2)
        if CAUSAL_MASK:
            visible = n_mask[None, :] & (pos[None, :] <= prefix + offs_m[:, None])
            if SLIDING:
                visible = visible & (pos[None, :] > prefix + offs_m[:, None] - window)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        if SLIDING and CAUSAL_MASK:
            # A row can meet a tile wholly outside its window before any key it sees: keep
            # its max at -inf but subtract 0, so that alpha and p are 0 and not NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_sub = m_new
        alpha = tl.exp2(m_i - m_sub)
        p = tl.exp2(qk - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = load_kv_tile(
            v_cache_ptr, v_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask, half,
            stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st, stride_sh, stride_sd,
            q.dtype, QUANT_BITS,
        )  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


# stride_bts changes from step to step: specialising on it (== 1, divisible by 16) would
# compile a new variant in the middle of serving, ~1 s of stall the first time each shows up.
@triton.jit(do_not_specialize=["stride_bts"])
def _paged_prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    cu_seqlens_q_ptr,
    context_lens_ptr,
    out_ptr,
    k_sz_ptr,
    v_sz_ptr,
    qk_scale,
    softcap_log2,
    window,
    head_dim,
    half,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_sb,
    stride_st,
    stride_sh,
    stride_sd,
    stride_bts,
    stride_btb,
    stride_ot,
    stride_oh,
    stride_od,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):
    m_block = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + seq).to(tl.int32)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1).to(tl.int32) - q_start
    m_start = m_block * BLOCK_M
    if m_start >= q_len:
        return
    ctx_len = tl.load(context_lens_ptr + seq).to(tl.int32)
    prefix = ctx_len - q_len  # tokens cached before this step
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < head_dim
    rows = (q_start + offs_m).to(tl.int64)
    q_ptrs = q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bts
    # Keys below `full_end` are visible to every query of this block: no mask needed.
    full_end = (tl.minimum(prefix + m_start + 1, ctx_len) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(prefix + m_start + BLOCK_M, ctx_len)
    lo = 0
    if SLIDING:
        # Keys [lo, hi) are seen by some query of the block, [mid_lo, full_end) by all of them:
        # the keys before lo are skipped, the two edges masked. mid_lo is rounded up to a tile
        # so that the unmasked tiles are whole (they check no bounds).
        lo = tl.maximum(prefix + m_start - window + 1, 0)
        mid_lo = tl.minimum(tl.cdiv(tl.maximum(hi - window, lo), BLOCK_N) * BLOCK_N, hi)
        full_end = tl.maximum(full_end, mid_lo)
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, k_sz_ptr, v_sz_ptr,
            bt_row, offs_m, offs_n, offs_d, d_mask,
            kv_head, lo, mid_lo, prefix, qk_scale, softcap_log2, window, half,
            stride_kb, stride_kt, stride_kh, stride_kd, stride_vb, stride_vt, stride_vh, stride_vd,
            stride_sb, stride_st, stride_sh, stride_sd, stride_btb,
            BLOCK_SIZE, BLOCK_N, True, DOT_PRECISION, True, SOFTCAP, QUANT_BITS,
        )  # fmt: skip
        lo = mid_lo
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, k_sz_ptr, v_sz_ptr,
            bt_row, offs_m, offs_n, offs_d, d_mask,
        kv_head, lo, full_end, prefix, qk_scale, softcap_log2, window, half,
        stride_kb, stride_kt, stride_kh, stride_kd, stride_vb, stride_vt, stride_vh, stride_vd,
        stride_sb, stride_st, stride_sh, stride_sd, stride_btb,
            BLOCK_SIZE, BLOCK_N, False, DOT_PRECISION, SLIDING, SOFTCAP, QUANT_BITS,
    )  # fmt: skip
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, k_sz_ptr, v_sz_ptr,
            bt_row, offs_m, offs_n, offs_d, d_mask,
        kv_head, full_end, hi, prefix, qk_scale, softcap_log2, window, half,
        stride_kb, stride_kt, stride_kh, stride_kd, stride_vb, stride_vt, stride_vh, stride_vd,
        stride_sb, stride_st, stride_sh, stride_sd, stride_btb,
            BLOCK_SIZE, BLOCK_N, True, DOT_PRECISION, SLIDING, SOFTCAP, QUANT_BITS,
    )  # fmt: skip

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _prefill_config(block_d: int, max_query_len: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), from a sweep on the H100 (bf16, 32/8 heads,
    dim 128): wide key tiles pay off for long queries; fp32 tiles keep to fit shared memory."""
    half = dtype.itemsize == 2
    block_m = 64 if max_query_len > 32 else 16
    block_n = 64 if block_d <= 64 or (half and max_query_len >= 1024) else 32
    return block_m, block_n, 4, 3 if half else 2


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
) -> torch.Tensor:
    """q: [num_tokens, heads, dim]; caches: [num_blocks, block_size, kv_heads, dim];
    block_tables: [num_seqs, max_blocks]; cu_seqlens_q: [num_seqs + 1]; context_lens:
    [num_seqs], each >= its query length. sliding_window: a query at position p sees keys
    p - sliding_window < pos <= p only; logit_softcap: scores = softcap * tanh(scores /
    softcap) after the scale. quant_bits 8 or 4: uint8 caches [.., packed_dim] with their
    (scale, zero) in k_scale_zero / v_scale_zero [num_blocks, block_size, kv_heads, 2]
    (kv_quant.py). Returns [num_tokens, heads, dim] in q's dtype."""
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, block_size, kv_heads, cache_dim = k_cache.shape
    num_seqs = context_lens.shape[0]
    assert v_cache.shape == k_cache.shape, "k_cache and v_cache must have the same shape"
    if quant_bits:
        check_quantized_caches(k_cache, v_cache, k_scale_zero, v_scale_zero, head_dim, quant_bits)
    else:
        assert cache_dim == head_dim, f"q head_dim {head_dim} != cache head_dim {cache_dim}"
        assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share a dtype"
        k_scale_zero = v_scale_zero = k_cache  # unused
    assert num_heads % kv_heads == 0, f"heads {num_heads} must be a multiple of {kv_heads=}"
    assert cu_seqlens_q.shape == (num_seqs + 1,), "cu_seqlens_q must be [num_seqs + 1]"
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, "one table row a seq"
    assert not block_tables.is_floating_point(), "block_tables must be int32 or int64"
    check_window(sliding_window)
    qk_scale, softcap_log2 = score_scales(scale, logit_softcap)
    out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_m, block_n, num_warps, num_stages = _prefill_config(block_d, max_query_len, q.dtype)
    grid = (triton.cdiv(max_query_len, block_m), num_heads, num_seqs)
    _paged_prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens_q,
        context_lens,
        out,
        k_scale_zero,
        v_scale_zero,
        qk_scale,
        softcap_log2,
        sliding_window or 0,
        head_dim,
        max(head_dim // 2, 1),
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *k_scale_zero.stride(),
        *block_tables.stride(),
        *out.stride(),
        GROUP=num_heads // kv_heads,
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        SLIDING=sliding_window is not None,
        SOFTCAP=logit_softcap is not None,
        QUANT_BITS=quant_bits,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
) -> torch.Tensor:
    """Plain torch, sequence by sequence, fp32 math with an explicit causal-offset mask
    (and window mask); a quantized cache dequantised whole first."""
    if quant_bits:
        k_cache = dequantize_kv_ref(k_cache, k_scale_zero, quant_bits, q.dtype)
        v_cache = dequantize_kv_ref(v_cache, v_scale_zero, quant_bits, q.dtype)
    num_heads = q.shape[1]
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros_like(q)
    for i in range(context_lens.shape[0]):
        start, end = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        q_len, ctx_len = end - start, int(context_lens[i])
        if q_len == 0:
            continue
        pos = torch.arange(ctx_len, device=q.device)
        blocks = block_tables[i, pos // block_size].long()
        k = k_cache[blocks, pos % block_size].float().repeat_interleave(num_heads // kv_heads, 1)
        v = v_cache[blocks, pos % block_size].float().repeat_interleave(num_heads // kv_heads, 1)
        scores = torch.einsum("thd,nhd->htn", q[start:end].float(), k) * scale
        if logit_softcap is not None:
            scores = logit_softcap * torch.tanh(scores / logit_softcap)
        q_pos = (ctx_len - q_len) + torch.arange(q_len, device=q.device)[:, None]
        visible = pos[None, :] <= q_pos
        if sliding_window is not None:
            visible &= pos[None, :] > q_pos - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        out[start:end] = torch.einsum("htn,nhd->thd", scores.softmax(-1), v).to(q.dtype)
    return out
