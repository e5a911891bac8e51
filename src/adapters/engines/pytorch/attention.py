"""Paged attention over the KV cache `[num_blocks, block_size, kv_heads, head_dim]`.

All sequences of a step arrive flattened into one token batch. New K/V are written to their
slots first; each sequence then attends to its whole context through its block table. These are
the torch paths (CPU, and any GPU without the Triton kernels); they are the kernels' reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached tokens of one sequence: [length, kv_heads, head_dim]."""
    return cache[block_table].flatten(0, 1)[:length]


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    num_seqs, num_heads, head_dim = q.shape
    max_len = max(meta.context_lens_list)
    num_blocks = -(-max_len // k_cache.shape[1])
    tables = meta.block_tables[:, :num_blocks]
    k = k_cache[tables].flatten(1, 2)[:, :max_len]  # [seqs, len, kv_heads, dim]
    v = v_cache[tables].flatten(1, 2)[:, :max_len]
    valid = torch.arange(max_len, device=q.device)[None, :] < meta.context_lens[:, None]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),  # [seqs, heads, 1, dim]
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=valid[:, None, None, :],
        scale=scale,
        enable_gqa=True,
    )
    return out.reshape(num_seqs, num_heads, head_dim)


def _prefill_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    out = torch.empty_like(q)
    start = 0
    for i, q_len in enumerate(meta.query_lens):
        end = start + q_len
        ctx_len = meta.context_lens_list[i]
        if ctx_len == q_len:  # nothing cached before: the fresh K/V are the whole context
            k, v = k_new[start:end], v_new[start:end]
        else:
            k = _gather_context(k_cache, meta.block_tables[i], ctx_len)
            v = _gather_context(v_cache, meta.block_tables[i], ctx_len)
        # Query t sees keys 0 .. (ctx_len - q_len + t).
        mask = torch.ones(q_len, ctx_len, dtype=torch.bool, device=q.device).tril(ctx_len - q_len)
        out[start:end] = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        ).transpose(0, 1)
        start = end
    return out


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q: [tokens, heads, dim]; k, v: [tokens, kv_heads, dim]. Returns [tokens, heads, dim]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    if meta.is_decode:
        return _decode_attention(q, k_cache, v_cache, meta, scale)
    return _prefill_attention(q, k, v, k_cache, v_cache, meta, scale)
