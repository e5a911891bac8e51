"""Paged attention over the KV cache `[num_blocks, block_size, kv_heads, head_dim]`.

All sequences of a step arrive flattened into one token batch. New K/V are written to their
slots first; each sequence then attends to its whole context through its block table. These are
the torch paths (CPU, and any GPU without the Triton kernels); they are the kernels' reference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cpu_attention import paged_decode_attention_cpu


@dataclass
class AttentionMetadata:
    """Per-step tensors shared by every layer (vLLM's vocabulary)."""

    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot of each new token
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, padded with 0
    context_lens: torch.Tensor  # [num_seqs] tokens in cache after this step
    query_lens: list[int]  # new tokens per sequence
    context_lens_list: list[int]
    is_decode: bool  # every sequence computes exactly one token
    num_cached_list: list[int]
    # Built once per step for every layer, for the sequences that compute one token: their
    # block tables and context lengths, and (for the torch path, see `decode_context`) their
    # context slots and mask; `decode_rows` are their rows in a step that also has longer queries.
    decode_tables: torch.Tensor | None = None
    decode_lens: torch.Tensor | None = None
    context_slots: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    decode_rows: torch.Tensor | None = None
    # For the CUDA kernels: query offsets [num_seqs + 1] and the longest query of the step.
    cu_seqlens_q: torch.Tensor | None = None
    max_query_len: int = 1


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
) -> None:
    """k, v: [num_tokens, kv_heads, head_dim] into their slots."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Cached tokens by flat slot: `[*slots.shape, kv_heads, head_dim]`. A row copy of exactly
    those tokens, several times faster than indexing whole blocks with the block table."""
    rows = cache.flatten(0, 1).index_select(0, slots.flatten())
    return rows.view(*slots.shape, *cache.shape[2:])


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence, q [seqs, heads, dim]: the C kernel where it runs, else
    the torch path over a padded copy of the contexts."""
    tables, lens = meta.decode_tables, meta.decode_lens
    if tables is None or lens is None:  # metadata built by hand: an all-decode step
        tables, lens = meta.block_tables, meta.context_lens
    out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, lens, scale)
    if out is not None:
        return out
    slots, valid = meta.context_slots, meta.context_mask
    if slots is None or valid is None:
        slots, valid = decode_context(tables, lens, int(lens.max()), k_cache.shape[1])
    return decode_attention_torch(q, k_cache, v_cache, slots, valid, scale)


def decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence: q [seqs, heads, dim] against its padded context."""
    k, v = _gather(k_cache, slots), _gather(v_cache, slots)  # [seqs, len, kv_heads, dim]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),  # [seqs, heads, 1, dim]
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=valid[:, None, None, :],
        scale=scale,
        enable_gqa=True,
    )
    return out.reshape(q.shape)


def _one_sequence(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """[tokens, heads, dim] each. Batched to 4-D: the CPU flash kernel takes nothing else (3-D
    inputs fall back to the math path, which also copies K/V per query head)."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)


def _prefill_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> None:
    """Sequence by sequence, skipping the one-token rows already done in `decode_rows`."""
    block_size = k_cache.shape[1]
    starts = itertools.accumulate(meta.query_lens, initial=0)
    for i, (start, q_len) in enumerate(zip(starts, meta.query_lens, strict=False)):
        if q_len == 1 and meta.decode_rows is not None:
            continue
        end, ctx_len = start + q_len, meta.context_lens_list[i]
        if ctx_len == q_len:  # nothing cached before: the fresh K/V are the whole context
            k, v = k_new[start:end], v_new[start:end]
            out[start:end] = _one_sequence(q[start:end], k, v, None, scale)
        else:
            slots, _ = decode_context(
                meta.block_tables[i : i + 1], meta.context_lens[i : i + 1], ctx_len, block_size
            )
            k, v = _gather(k_cache, slots[0]), _gather(v_cache, slots[0])
            # Query t sees keys 0 .. (ctx_len - q_len + t).
            mask = torch.ones(q_len, ctx_len, dtype=torch.bool, device=q.device)
            out[start:end] = _one_sequence(q[start:end], k, v, mask.tril(ctx_len - q_len), scale)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    kv_written: bool = False,
) -> torch.Tensor:
    """q: [tokens, heads, dim]; k, v: [tokens, kv_heads, dim]. Returns [tokens, heads, dim].
    `kv_written`: k and v are already in their cache slots (cpu_ops.rotary_write_kv)."""
    if q.is_cuda:
        from .cuda_attention import paged_attention_cuda  # Triton: imported only where it runs

        return paged_attention_cuda(q, k, v, k_cache, v_cache, meta, scale)
    if not kv_written:
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    if meta.is_decode:
        return _decode_attention(q, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        assert meta.decode_tables is not None, "decode_rows come with their tables"
        rows = meta.decode_rows
        out[rows] = _decode_attention(q[rows], k_cache, v_cache, meta, scale)
    _prefill_attention(out, q, k, v, k_cache, v_cache, meta, scale)
    return out
