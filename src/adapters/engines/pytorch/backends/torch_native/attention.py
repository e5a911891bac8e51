"""Paged attention in torch ops, over the KV cache `[num_blocks, block_size, kv_heads, head_dim]`.

The path of the CPU (and of any device without its own kernels), and the reference of the
kernels in the tests. New K/V are written to their slots first (`write_kv`); each sequence then
attends to its whole context through its block table.

A quantized cache (`quant_policy` 8 or 4, the format of `lmdeploy.kernels.kv_quant`) comes with
`scale_zero`, the (k, v) pair of (scale, zero) tensors: tokens are quantized as they are written
and only the gathered tokens of a context are dequantised, into the query's dtype.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ......kernels.kv_quant import dequantize_kv_ref, quantize_kv_ref
from ..attention_metadata import AttentionMetadata

# The (k, v) scale/zero tensors of a quantized cache, `[num_blocks, block_size, kv_heads, 2]`.
ScaleZero = tuple[torch.Tensor, torch.Tensor]


def quant_bits(cache: torch.Tensor, head_dim: int, scale_zero: ScaleZero | None) -> int:
    """0 for a float cache, else the bits a value of the quantized cache holds."""
    return 0 if scale_zero is None else cache.shape[-1] * 8 // head_dim


def decode_context(
    block_tables: torch.Tensor, context_lens: torch.Tensor, max_len: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat cache slot of every context position `[num_seqs, max_len]` (0 past a
    sequence's end) and the mask of the real ones."""
    pos = torch.arange(max_len, device=block_tables.device)
    valid = pos[None, :] < context_lens[:, None]
    slots = block_tables[:, pos // block_size] * block_size + pos % block_size
    return slots.masked_fill_(~valid, 0), valid


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    scale_zero: ScaleZero | None = None,
) -> None:
    """k, v: [num_tokens, kv_heads, head_dim] into their slots (quantized first when the
    cache is)."""
    bits = quant_bits(k_cache, k.shape[-1], scale_zero)
    for x, cache, sz in zip((k, v), (k_cache, v_cache), scale_zero or (None, None), strict=True):
        if bits:
            x, pair = quantize_kv_ref(x, bits)
            sz.view(-1, *sz.shape[2:]).index_copy_(0, slot_mapping, pair.to(sz.dtype))
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, x)


def _rows(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    rows = cache.flatten(0, 1).index_select(0, slots.flatten())
    return rows.view(*slots.shape, *cache.shape[2:])


def _gather(
    caches: tuple[torch.Tensor, torch.Tensor],
    slots: torch.Tensor,
    scale_zero: ScaleZero | None,
    head_dim: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached K and V by flat slot: `[*slots.shape, kv_heads, head_dim]` each, dequantised
    into `dtype` if quantized. A row copy of exactly those tokens, several times faster than
    indexing whole blocks with the block table."""
    k, v = _rows(caches[0], slots), _rows(caches[1], slots)
    bits = quant_bits(caches[0], head_dim, scale_zero)
    if bits:
        k = dequantize_kv_ref(k, _rows(scale_zero[0], slots), bits, dtype)
        v = dequantize_kv_ref(v, _rows(scale_zero[1], slots), bits, dtype)
    return k, v


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    logit_softcap: float | None,
) -> torch.Tensor:
    """Batched [batch, heads, q_len, dim] attention (k, v with kv_heads); `mask` True where a
    key is seen, None for causal. SDPA cannot cap scores, so a soft cap takes the math path
    (the kernels' *_ref order: scale, cap, mask, softmax in float32)."""
    if logit_softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    scores = logit_softcap * torch.tanh(scores / logit_softcap)
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


def decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    scale_zero: ScaleZero | None = None,
) -> torch.Tensor:
    """One query token per sequence: q [seqs, heads, dim] against its padded context. With
    `sliding_window` W, the query (the last valid position n - 1) sees positions > n - 1 - W."""
    # [seqs, len, kv_heads, dim]
    k, v = _gather((k_cache, v_cache), slots, scale_zero, q.shape[-1], q.dtype)
    if sliding_window is not None:
        pos = torch.arange(valid.shape[1], device=valid.device)
        last = valid.sum(-1, keepdim=True) - 1
        valid = valid & (pos[None, :] > last - sliding_window)
    out = _attend(
        q.unsqueeze(2),  # [seqs, heads, 1, dim]
        k.transpose(1, 2),
        v.transpose(1, 2),
        valid[:, None, None, :],
        scale,
        logit_softcap,
    )
    return out.reshape(q.shape)


def _one_sequence(
    q, k, v, mask: torch.Tensor | None, scale: float, logit_softcap: float | None
) -> torch.Tensor:
    """[tokens, heads, dim] each. Batched to 4-D: the CPU flash kernel takes nothing else (3-D
    inputs fall back to the math path, which also copies K/V per query head)."""
    out = _attend(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        mask,
        scale,
        logit_softcap,
    )
    return out[0].transpose(0, 1)


def prefill_mask(
    q_len: int, ctx_len: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor | None:
    """[q_len, ctx_len], True where a key is seen: query t sits at position p = ctx_len - q_len
    + t and sees keys p - W < pos <= p. None for the plain causal mask of a fresh prompt."""
    if ctx_len == q_len and sliding_window is None:
        return None
    offset = ctx_len - q_len
    ones = torch.ones(q_len, ctx_len, dtype=torch.bool, device=device)
    mask = ones.tril(offset)
    if sliding_window is not None:
        mask &= ~ones.tril(offset - sliding_window)
    return mask


def prefill_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    scale_zero: ScaleZero | None = None,
) -> None:
    """Sequence by sequence, skipping the one-token rows already done in `decode_rows`. A
    quantized cache is always read back, so that a prompt sees the K/V its decode steps will."""
    block_size = k_cache.shape[1]
    starts = itertools.accumulate(meta.query_lens, initial=0)
    for i, (start, q_len) in enumerate(zip(starts, meta.query_lens, strict=False)):
        if q_len == 1 and meta.decode_rows is not None:
            continue
        end, ctx_len = start + q_len, meta.context_lens_list[i]
        mask = prefill_mask(q_len, ctx_len, sliding_window, q.device)
        if ctx_len == q_len and scale_zero is None:  # nothing cached before: fresh K/V only
            k, v = k_new[start:end], v_new[start:end]
        else:
            slots, _ = decode_context(
                meta.block_tables[i : i + 1], meta.context_lens[i : i + 1], ctx_len, block_size
            )
            k, v = _gather((k_cache, v_cache), slots[0], scale_zero, q.shape[-1], q.dtype)
        out[start:end] = _one_sequence(q[start:end], k, v, mask, scale, logit_softcap)
