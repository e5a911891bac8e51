"""Decode attention over the paged KV cache: one query token per sequence, split-K.

The cache is `[num_blocks, block_size, kv_heads, head_dim]`; sequence `s` owns the blocks listed
in `block_tables[s]` and its first `context_lens[s]` slots hold its keys and values.

Flash-decoding in two launches. Stage 1, grid `(num_seqs, kv_heads, num_splits)`: each program
takes the query heads that share one kv head (GQA: K/V are read once for the whole group),
walks its chunk of the context in `BLOCK_N`-token tiles (each token's page looked up in the
block table), and keeps an online softmax (running max, sum, output) in fp32. It writes the
chunk's normalised output and log-sum-exp. Stage 2, grid `(num_seqs, heads)`: weights the
chunks by `exp(lse - max lse)` and sums. With one split, stage 1 writes the output directly.
With `combine_splits` stage 2 runs inside stage 1 instead: the program of each (seq, kv head)
that finishes last (an atomic counter) combines its group's heads.

Cost per step, for C = sum(context_lens), H heads, KV kv heads, D head_dim, e bytes/element:
bytes ~= 2 * C * KV * D * e (K and V read once) + 2 * num_seqs * H * D * e (q in, out back)
+ num_seqs * H * num_splits * (D + 1) * 4 * 2 (fp32 partials written and read back);
FLOPs = 4 * C * H * D (q.k and p.v). Arithmetic intensity ~ H / KV FLOPs per byte (at e=2):
far under the H100's ridge point, so the kernel is bandwidth-bound and the target is
bytes / ~3 TB/s. Split-K exists to fill 132 SMs when num_seqs * kv_heads is small.

Two options for Mistral and Gemma 2, each a constexpr branch that costs nothing when off:
`sliding_window` W lets the query (at position context_len - 1) see only the last W keys,
transformers' `kv_idx > q_idx - W`; the splits then share just those keys, so the blocks
before the window are never read (C above becomes sum(min(context_lens, W))).
`logit_softcap` caps the scaled scores at +-softcap through a tanh (see attention_scores.py).

A quantized cache (`quant_bits` 8 or 4, the format of kv_quant.py) is a third constexpr branch,
and the bytes of K and V above shrink to bits / 8 a value plus 2 * e a token and head. Its codes
are never dequantised element by element (that made the loop issue-bound, benchmark/NOTES.md):
with k = (c - z) s and v likewise, q . k = s (q . c - z sum q) and sum_n p_n v_n =
(p s) . c - sum_n p_n s_n z_n, so the codes go to the dots as they are and each token's
(scale, zero) corrects the scores and the output after. `transposed` runs those two products
as scores^T = codes q^T and out^T = codes^T (p s)^T, the group's heads the dots' narrow N (8)
instead of M rows padded to 16: 96 registers a thread where the plain loop holds 121-182
(kv_attention_sass.py), untimed so far, so off by default.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .attention_scores import check_window, score_scales, soft_cap
from .decode_split_combine import (
    MAX_COMBINE_ELEMENTS,
    combine_splits_of_heads,
    reduce_splits,
)
from .kv_code_dots import (
    byte_codes,
    byte_offset,
    byte_operand,
    nibble_offset,
    nibbles,
    quantized_scores,
    quantized_scores_transposed,
)
from .kv_quant import (
    check_quantized_caches,
    dequantize_kv_ref,
    load_codes,
    load_kv_tile,
    tile_slots,
)
from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release
from .w4a16_gemm import MAX_COLUMN_TILES, _split_counters


@triton.jit
def _write_out(
    out, offs_d, d_mask, out_ptr, part_out_ptr, seq, offs_h, h_mask, split, num_heads,
    stride_os, stride_oh, stride_od, NUM_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The normalised output columns `offs_d` of this program's heads: the output itself with
    one split, else this split's partial."""
    store_mask = h_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        o_ptrs = (
            out_ptr + seq * stride_os + offs_h[:, None] * stride_oh + offs_d[None, :] * stride_od
        )
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # Partials are contiguous [num_seqs, num_heads, NUM_SPLITS, BLOCK_D] and [.., NUM_SPLITS].
        row = (seq * num_heads + offs_h) * NUM_SPLITS + split
        tl.store(part_out_ptr + row[:, None] * BLOCK_D + offs_d[None, :], out, mask=store_mask)


@triton.jit
def _quantized_tiles_transposed(
    q, q_hi, q_sum, k_cache_ptr, v_cache_ptr, k_sz_ptr, v_sz_ptr, bt_row, start, end, kv_head,
    offs_d, d_mask, qk_scale, softcap_log2, stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st, stride_sh, stride_sd,
    stride_btb, DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):  # fmt: skip
    """The kernel's tile loop over a quantized cache with both products transposed: scores^T
    [BLOCK_N, BLOCK_H] = codes q^T and out^T += codes^T (p s)^T, so the group's heads are the
    dots' narrow N (8 wide) rather than rows of M padded to 16, and the softmax runs down the
    columns. Returns (acc, acc_hi, v_corr, m_i, l_i) as the kernel's own loop leaves them."""
    offs_n = tl.arange(0, BLOCK_N)
    q_t = tl.trans(q)
    q_hi_t = tl.trans(q_hi)
    acc_t = tl.zeros([q.shape[1], BLOCK_H], dtype=tl.float32)
    acc_hi_t = tl.zeros([q.shape[1], BLOCK_H], dtype=tl.float32)  # int4 only
    v_corr = tl.zeros([BLOCK_H], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    for tile in range(start, end, BLOCK_N):
        _, n_mask, block, slot_in_block, kv_mask = tile_slots(
            bt_row, tile, offs_n, end, d_mask, stride_btb, BLOCK_SIZE
        )
        k_codes, k_scale, k_zero = load_codes(
            k_cache_ptr, k_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
            stride_kb, stride_kt, stride_kh, stride_kd, stride_sb, stride_st, stride_sh, stride_sd,
        )  # fmt: skip
        qk_t = quantized_scores_transposed(
            q_t, q_hi_t, q_sum, k_codes, k_scale * qk_scale, k_zero, DTYPE, DOT_PRECISION,
            QUANT_BITS,
        )  # fmt: skip
        if SOFTCAP:
            qk_t = soft_cap(qk_t, softcap_log2)
        qk_t = tl.where(n_mask[:, None], qk_t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk_t, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p_t = tl.exp2(qk_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, axis=0)
        v_codes, v_scale, v_zero = load_codes(
            v_cache_ptr, v_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
            stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st, stride_sh, stride_sd,
        )  # fmt: skip
        if QUANT_BITS == 4:
            ps_t = (p_t * v_scale[:, None]).to(DTYPE)
            v_zero = v_zero + nibble_offset(DTYPE)
            acc_t = tl.dot(
                tl.trans(nibbles(v_codes, False, DTYPE)), ps_t, acc_t * alpha[None, :],
                input_precision=DOT_PRECISION,
            )  # fmt: skip
            acc_hi_t = tl.dot(
                tl.trans(nibbles(v_codes, True, DTYPE)), ps_t, acc_hi_t * alpha[None, :],
                input_precision=DOT_PRECISION,
            )  # fmt: skip
        else:
            ps_t = byte_operand(p_t * v_scale[:, None], DTYPE, True)  # p, s >= 0
            v_zero = v_zero + byte_offset(DTYPE)
            acc_t = tl.dot(
                tl.trans(byte_codes(v_codes, DTYPE)), ps_t, acc_t * alpha[None, :],
                input_precision=DOT_PRECISION,
            )  # fmt: skip
        v_corr = v_corr * alpha + tl.sum(ps_t.to(tl.float32) * v_zero[:, None], axis=0)
        m_i = m_new
    return tl.trans(acc_t), tl.trans(acc_hi_t), v_corr, m_i, l_i


# stride_bts changes from step to step: specialising on it (== 1, divisible by 16) would
# compile a new variant in the middle of serving, ~1 s of stall the first time each shows up.
@triton.jit(do_not_specialize=["stride_bts"])
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    counter_ptr,
    k_sz_ptr,
    v_sz_ptr,
    qk_scale,
    softcap_log2,
    window,
    num_heads,
    head_dim,
    half,
    stride_qs,
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
    stride_os,
    stride_oh,
    stride_od,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    QUANT_BITS: tl.constexpr,
    COMBINE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PDL: tl.constexpr,
    TRANSPOSED: tl.constexpr,
):
    # q, the caches (the rotary kernel writes this step's key and value), the block tables and
    # the lengths may all be written in the step: nothing is worth loading before the wait.
    pdl_wait_then_release(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    offs_h = kv_head * GROUP + tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = tl.arange(0, BLOCK_H) < GROUP
    d_mask = offs_d < head_dim
    dtype = q_ptr.dtype.element_ty

    ctx_len = tl.load(context_lens_ptr + seq).to(tl.int32)
    first = 0
    if SLIDING:
        # Keys before the window are skipped, not masked: the splits divide the window alone.
        first = tl.maximum(ctx_len - window, 0)
    # Each split owns a whole number of tiles; late splits of short sequences get none.
    chunk = tl.cdiv(tl.cdiv(ctx_len - first, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = first + split * chunk
    end = tl.minimum(start + chunk, ctx_len)

    q_row = q_ptr + seq * stride_qs + offs_h[:, None] * stride_qh
    if QUANT_BITS == 4:
        # A byte c holds dims c and c + half: q, acc and the output go in those two halves
        # ([BLOCK_H, BLOCK_C] each), so each byte is loaded once and split in registers.
        offs_d = tl.arange(0, BLOCK_C)
        d_mask = offs_d < half
        q_mask = h_mask[:, None] & d_mask[None, :]
        q = tl.load(q_row + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        q_hi = tl.load(q_row + (half + offs_d)[None, :] * stride_qd, mask=q_mask, other=0.0)
        q_sum = tl.sum(q.to(tl.float32), axis=1) + tl.sum(q_hi.to(tl.float32), axis=1)
        acc_hi = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    else:
        q_mask = h_mask[:, None] & d_mask[None, :]
        q = tl.load(q_row + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        if QUANT_BITS == 8:
            q = byte_operand(q, dtype, False)  # its sum below is of the values the dot multiplies
        q_hi = q  # int4 only
        q_sum = tl.sum(q.to(tl.float32), axis=1)  # the float cache never uses it: compiled out
        acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    # sum_n p_n * s_n * z_n of the quantized V (times the same alphas as acc): subtracted once
    # at the end rather than from every [BLOCK_H, BLOCK_D] tile.
    v_corr = tl.zeros([BLOCK_H], dtype=tl.float32)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bts
    if TRANSPOSED:  # a quantized cache only
        acc, acc_hi, v_corr, m_i, l_i = _quantized_tiles_transposed(
            q, q_hi, q_sum, k_cache_ptr, v_cache_ptr, k_sz_ptr, v_sz_ptr, bt_row, start, end,
            kv_head, offs_d, d_mask, qk_scale, softcap_log2, stride_kb, stride_kt, stride_kh,
            stride_kd, stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st,
            stride_sh, stride_sd, stride_btb, dtype, BLOCK_SIZE, BLOCK_N, BLOCK_H,
            DOT_PRECISION, SOFTCAP, QUANT_BITS,
        )  # fmt: skip
    else:
        for tile in range(start, end, BLOCK_N):
            _, n_mask, block, slot_in_block, kv_mask = tile_slots(
                bt_row, tile, offs_n, end, d_mask, stride_btb, BLOCK_SIZE
            )
            if QUANT_BITS == 0:
                k = load_kv_tile(
                    k_cache_ptr, k_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
                    half, stride_kb, stride_kt, stride_kh, stride_kd, stride_sb, stride_st,
                    stride_sh, stride_sd, dtype, QUANT_BITS,
                )  # fmt: skip
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 domain
            else:
                k_codes, k_scale, k_zero = load_codes(
                    k_cache_ptr, k_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
                    stride_kb, stride_kt, stride_kh, stride_kd, stride_sb, stride_st,
                    stride_sh, stride_sd,
                )  # fmt: skip
                qk = quantized_scores(
                    q, q_hi, q_sum, k_codes, k_scale * qk_scale, k_zero, dtype, DOT_PRECISION,
                    QUANT_BITS,
                )  # fmt: skip
            if SOFTCAP:
                qk = soft_cap(qk, softcap_log2)
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if QUANT_BITS == 0:
                v = load_kv_tile(
                    v_cache_ptr, v_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
                    half, stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st,
                    stride_sh, stride_sd, dtype, QUANT_BITS,
                )  # fmt: skip
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            else:
                # sum_n p_n (v_n - z_n) s_n = (p s) . codes - sum_n p_n s_n z_n, with p s rounded
                # to the dot's dtype once and that same value in both terms.
                v_codes, v_scale, v_zero = load_codes(
                    v_cache_ptr, v_sz_ptr, block, slot_in_block, kv_head, offs_d, n_mask, kv_mask,
                    stride_vb, stride_vt, stride_vh, stride_vd, stride_sb, stride_st,
                    stride_sh, stride_sd,
                )  # fmt: skip
                if QUANT_BITS == 4:
                    ps = (p * v_scale[None, :]).to(dtype)
                    v_zero = v_zero + nibble_offset(dtype)
                    acc = tl.dot(
                        ps, nibbles(v_codes, False, dtype), acc * alpha[:, None],
                        input_precision=DOT_PRECISION,
                    )  # fmt: skip
                    acc_hi = tl.dot(
                        ps, nibbles(v_codes, True, dtype), acc_hi * alpha[:, None],
                        input_precision=DOT_PRECISION,
                    )  # fmt: skip
                else:
                    ps = byte_operand(p * v_scale[None, :], dtype, True)  # p, s >= 0
                    v_zero = v_zero + byte_offset(dtype)
                    acc = tl.dot(
                        ps,
                        byte_codes(v_codes, dtype),
                        acc * alpha[:, None],
                        input_precision=DOT_PRECISION,
                    )
                v_corr = v_corr * alpha + tl.sum(ps.to(tl.float32) * v_zero[None, :], axis=1)
            m_i = m_new

    # An empty chunk keeps l_i == 0: write zeros and lse = -inf so stage 2 gives it no weight.
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)[:, None]
    if QUANT_BITS == 0:
        out = acc / l_safe
    else:
        out = (acc - v_corr[:, None]) / l_safe
    _write_out(
        out, offs_d, d_mask, out_ptr, part_out_ptr, seq, offs_h, h_mask, split, num_heads,
        stride_os, stride_oh, stride_od, NUM_SPLITS, BLOCK_D,
    )  # fmt: skip
    if QUANT_BITS == 4:
        out_hi = (acc_hi - v_corr[:, None]) / l_safe
        _write_out(
            out_hi, half + offs_d, d_mask, out_ptr, part_out_ptr, seq, offs_h, h_mask, split,
            num_heads, stride_os, stride_oh, stride_od, NUM_SPLITS, BLOCK_D,
        )  # fmt: skip
    if NUM_SPLITS > 1:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        row = (seq * num_heads + offs_h) * NUM_SPLITS + split
        tl.store(part_lse_ptr + row, lse, mask=h_mask)
        if COMBINE:  # the split of (seq, kv head) that finishes last combines all of them
            tl.debug_barrier()  # every thread's partials are written before the counter moves
            counter = counter_ptr + seq * tl.num_programs(1) + kv_head
            if tl.atomic_add(counter, 1, sem="acq_rel") == NUM_SPLITS - 1:
                combine_splits_of_heads(
                    part_out_ptr, part_lse_ptr, out_ptr, seq, kv_head * GROUP, num_heads,
                    head_dim, stride_os, stride_oh, stride_od, GROUP, NUM_SPLITS, BLOCK_G,
                    BLOCK_S, BLOCK_D,
                )  # fmt: skip
                tl.atomic_xchg(counter, 0)  # zero again for the next launch (and graph replay)


@functools.lru_cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# The int8 cache's loop holds ~186 registers a thread under Triton 3.6 (2 programs of 4 warps a
# SM): an H200 sweep at 256 x 1024 (benchmark/NOTES.md, session 9) ran it fastest with 128-key
# tiles, no software pipelining and two splits: 301 us against 448 us at 64 keys, 2 stages, 1.
_INT8_BLOCK_N = 128


def _default_num_splits(num_seqs: int, kv_heads: int, max_context: int, device: torch.device):
    """One split once (seq, kv head) programs fill the SMs; below that, about 8 programs per SM
    with chunks of at least 256 tokens (from a sweep on the H100), rounded down to a power of
    two: the count is a constexpr, so each distinct one is a compile (~1 s, during which an
    eager step's requests all wait); powers of two keep them few enough to compile at start
    (`SPLIT_COUNTS`). Uses only shapes, no host sync on context_lens, so it is CUDA-graph
    friendly."""
    if device.type != "cuda":
        return 1 if max_context <= 256 else 2
    num_sms = _num_sms(device)
    programs = max(num_seqs * kv_heads, 1)
    if programs >= num_sms:
        return 1
    wanted = min(triton.cdiv(8 * num_sms, programs), triton.cdiv(max_context, 256), 64)
    return 1 << (max(wanted, 1).bit_length() - 1)


# Every count `_default_num_splits` may pick on CUDA.
SPLIT_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def split_counts_up_to(max_context: int) -> tuple[int, ...]:
    """The split counts a decode over contexts of at most `max_context` tokens may use."""
    return tuple(n for n in SPLIT_COUNTS if n == 1 or n <= triton.cdiv(max_context, 256))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    block_n: int | None = None,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
    num_warps: int = 4,
    num_stages: int | None = None,
    combine_splits: bool | None = None,
    transposed: bool | None = None,
) -> torch.Tensor:
    """q: [num_seqs, heads, dim]; caches: [num_blocks, block_size, kv_heads, dim];
    block_tables: [num_seqs, max_blocks] int32/int64; context_lens: [num_seqs].
    sliding_window: attend to the last this-many positions (the query's own included) only;
    logit_softcap: scores = softcap * tanh(scores / softcap) after the scale.
    quant_bits 8 or 4: uint8 caches [.., packed_dim] with their (scale, zero) in
    k_scale_zero / v_scale_zero [num_blocks, block_size, kv_heads, 2] (kv_quant.py).
    num_splits, block_n, num_warps, num_stages: the launch (None: picked from the shapes).
    combine_splits: the last split of each (seq, kv head) combines the splits' partials in the
    same launch instead of a second one (None: `LMDEPLOY_ATTN_COMBINE=1`; off by default until
    measured, benchmark/NOTES.md session 9).
    transposed: a quantized cache's products computed transposed (`_quantized_tiles_transposed`;
    None: `LMDEPLOY_KV_ATTN_TRANSPOSED=1`, off by default until timed, benchmark/NOTES.md
    session 17).
    Returns [num_seqs, heads, dim] in q's dtype."""
    num_seqs, num_heads, head_dim = q.shape
    num_blocks, block_size, kv_heads, cache_dim = k_cache.shape
    assert v_cache.shape == k_cache.shape, "k_cache and v_cache must have the same shape"
    if quant_bits:
        check_quantized_caches(k_cache, v_cache, k_scale_zero, v_scale_zero, head_dim, quant_bits)
    else:
        assert cache_dim == head_dim, f"q head_dim {head_dim} != cache head_dim {cache_dim}"
        assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share a dtype"
        k_scale_zero = v_scale_zero = k_cache  # unused
    assert num_heads % kv_heads == 0, f"heads {num_heads} must be a multiple of {kv_heads=}"
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, "one table row a seq"
    assert context_lens.shape == (num_seqs,), "context_lens must be [num_seqs]"
    assert not block_tables.is_floating_point(), "block_tables must be int32 or int64"
    check_window(sliding_window)
    qk_scale, softcap_log2 = score_scales(scale, logit_softcap)
    group = num_heads // kv_heads
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    max_context = block_tables.shape[1] * block_size
    if sliding_window is not None:
        max_context = min(max_context, sliding_window)
    block_d = max(16, triton.next_power_of_2(head_dim))
    if transposed is None:
        transposed = os.environ.get("LMDEPLOY_KV_ATTN_TRANSPOSED") == "1"
    transposed = transposed and quant_bits != 0
    # tl.dot needs M >= 16; transposed, the heads are its N, which may be 8.
    block_h = max(8 if transposed else 16, triton.next_power_of_2(group))
    int8_half = quant_bits == 8 and q.dtype.itemsize == 2 and q.device.type == "cuda"
    if num_splits is None:
        num_splits = _default_num_splits(num_seqs, kv_heads, max_context, q.device)
        if int8_half and num_splits == 1 and max_context >= 2 * _INT8_BLOCK_N:
            num_splits = 2  # shorter programs: the low-occupancy int8 loop balances better
    assert num_splits >= 1, "num_splits must be positive"
    if block_n is None:
        block_n = (
            _INT8_BLOCK_N if int8_half else 64 if block_d <= 64 or q.dtype.itemsize == 2 else 32
        )
    if num_stages is None:
        num_stages = 1 if int8_half else 2
    if num_splits > 1:
        part_out = torch.empty(
            num_seqs, num_heads, num_splits, block_d, dtype=torch.float32, device=q.device
        )
        part_lse = torch.empty(
            num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device
        )
    else:
        part_out = part_lse = out  # unused
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    pdl = pdl_enabled(q.device)
    block_g, block_s = triton.next_power_of_2(group), triton.next_power_of_2(num_splits)
    if combine_splits is None:
        combine_splits = os.environ.get("LMDEPLOY_ATTN_COMBINE") == "1"
    combine = (
        combine_splits
        and num_splits > 1
        and block_g * block_s * block_d <= MAX_COMBINE_ELEMENTS
        and num_seqs * kv_heads <= MAX_COLUMN_TILES
    )
    _paged_decode_kernel[(num_seqs, kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        part_out,
        part_lse,
        _split_counters(q.device, "decode_splits") if combine else out,  # read with COMBINE
        k_scale_zero,
        v_scale_zero,
        qk_scale,
        softcap_log2,
        sliding_window or 0,
        num_heads,
        head_dim,
        max(head_dim // 2, 1),
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *k_scale_zero.stride(),
        *block_tables.stride(),
        *out.stride(),
        GROUP=group,
        BLOCK_SIZE=block_size,
        NUM_SPLITS=num_splits,
        BLOCK_H=block_h,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        BLOCK_C=max(16, triton.next_power_of_2(head_dim // 2)),
        DOT_PRECISION=precision,
        SLIDING=sliding_window is not None,
        SOFTCAP=logit_softcap is not None,
        QUANT_BITS=quant_bits,
        COMBINE=combine,
        BLOCK_G=block_g,
        BLOCK_S=block_s,
        PDL=pdl,
        TRANSPOSED=transposed,
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl_launch_options(pdl),
    )
    if num_splits > 1 and not combine:
        reduce_splits(part_out, part_lse, out, pdl)
    return out


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
) -> torch.Tensor:
    """Plain torch, sequence by sequence, fp32 math; the window as an explicit mask; a
    quantized cache dequantised whole first."""
    if quant_bits:
        k_cache = dequantize_kv_ref(k_cache, k_scale_zero, quant_bits, q.dtype)
        v_cache = dequantize_kv_ref(v_cache, v_scale_zero, quant_bits, q.dtype)
    num_seqs, num_heads, head_dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros_like(q)
    for s in range(num_seqs):
        n = int(context_lens[s])
        if n == 0:
            continue
        pos = torch.arange(n, device=q.device)
        blocks = block_tables[s, pos // block_size].long()
        k = k_cache[blocks, pos % block_size].float()  # [n, kv_heads, dim]
        v = v_cache[blocks, pos % block_size].float()
        k = k.repeat_interleave(num_heads // kv_heads, dim=1)
        v = v.repeat_interleave(num_heads // kv_heads, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[s].float(), k) * scale
        if logit_softcap is not None:
            scores = logit_softcap * torch.tanh(scores / logit_softcap)
        if sliding_window is not None:
            scores = scores.masked_fill(pos <= (n - 1) - sliding_window, float("-inf"))
        out[s] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out
