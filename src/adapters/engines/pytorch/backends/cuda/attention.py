"""Paged attention on CUDA through the Triton kernels of `lmdeploy.kernels`.

Same contract as `layers/attention.paged_attention`: new K/V go to their slots first, then every
query attends to its whole cached context. Only tensors are read (no host lists), so the
decode path can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ......kernels.kv_cache_write import kv_cache_write
from ......kernels.paged_decode_attention import paged_decode_attention, split_counts_up_to
from ......kernels.paged_prefill_attention import paged_prefill_attention
from ..attention_metadata import AttentionMetadata


def _quant_args(
    q: torch.Tensor, k_cache: torch.Tensor, scale_zero: tuple[torch.Tensor, torch.Tensor] | None
) -> dict:
    """The kernels' quantized-cache arguments: a uint8 cache's bits a value follow from its last
    dim against the head dim (lmdeploy_kernels/kv_quant.py)."""
    bits = 0 if scale_zero is None else k_cache.shape[-1] * 8 // q.shape[-1]
    k_sz, v_sz = scale_zero or (None, None)
    return dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits)


def paged_attention_cuda(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    scale_zero: tuple[torch.Tensor, torch.Tensor] | None = None,
    kv_written: bool = False,
) -> torch.Tensor:
    """`scale_zero`: the (k, v) scale/zero tensors of a quantized (uint8) cache, whose bits a
    value follow from its last dim against the head dim (lmdeploy_kernels/kv_quant.py); `kv_written`:
    the rotary kernel already wrote k and v to their slots (k and v may then be None)."""
    quant = _quant_args(q, k_cache, scale_zero)
    if not kv_written:
        assert k is not None and v is not None, "k and v to write"
        kv_cache_write(k, v, k_cache, v_cache, meta.slot_mapping, **quant)
    window = dict(sliding_window=sliding_window, logit_softcap=logit_softcap)
    if meta.is_decode:
        return paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, **window, **quant
        )
    part = meta.prefill_part
    if part is None:  # every sequence has a longer query
        return paged_prefill_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.cu_seqlens_q,
            meta.context_lens,
            meta.max_query_len,
            scale,
            **window,
            **quant,
        )
    assert meta.decode_rows is not None and meta.decode_tables is not None
    assert meta.decode_lens is not None, "a prefill_part comes with the decode rows"
    out = torch.empty_like(q)
    out[meta.decode_rows] = paged_decode_attention(
        q[meta.decode_rows],
        k_cache,
        v_cache,
        meta.decode_tables,
        meta.decode_lens,
        scale,
        **window,
        **quant,
    )
    out[part.rows] = paged_prefill_attention(
        q[part.rows],
        k_cache,
        v_cache,
        part.block_tables,
        part.cu_seqlens_q,
        part.context_lens,
        part.max_query_len,
        scale,
        **window,
        **quant,
    )
    return out


def _first_layer(kv_caches: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """(k cache, v cache, (k, v) scale/zero or None) of the first layer: every layer's cache
    has the same shapes, so the kernels compiled over it serve them all."""
    cache = kv_caches[0]
    return cache[0], cache[1], ((cache[2], cache[3]) if len(cache) == 4 else None)


# Query lengths that pick each tile shape of the prefill kernel (`_prefill_config`: up to 32,
# up to 1023, from 1024). Triton compiles a shape the first time a step needs it, ~1 s during
# which every running request waits (a log-normal serving run's first long prompt: 1.36 s
# against ~0.13 s for its peers, benchmark/NOTES.md session 14), so each is compiled at start.
PREFILL_SHAPE_LENS = (16, 64, 1024)


@torch.inference_mode()
def compile_prefill_kernels(
    kinds: Iterable[tuple[tuple[int, int, int], Any]],
    kv_caches: list[tuple[torch.Tensor, ...]],
    block_size: int,
    dtype: torch.dtype,
) -> int:
    """Run the prefill kernel once per tile shape and per kind of attention layer (`kinds`:
    each layer's (heads, kv heads, head dim) and its options: scale, window, cap), with the
    arguments a step gives it: one sequence reading the cache's first blocks (read only; the
    output is dropped); `dtype`: the model's. Returns the launches."""
    k_cache, v_cache, scale_zero = _first_layer(kv_caches)
    capacity = k_cache.shape[0] * block_size
    device = k_cache.device
    launches = 0
    for (heads, _kv_heads, dim), opts in sorted(set(kinds), key=repr):
        for length in (n for n in PREFILL_SHAPE_LENS if n <= capacity):
            blocks = -(-length // block_size)
            q = torch.zeros(length, heads, dim, dtype=dtype, device=device)
            # int64 tables and lengths, as the runner's steps pass them (a dtype is in the key).
            paged_prefill_attention(
                q,
                k_cache,
                v_cache,
                torch.arange(blocks, device=device).view(1, blocks),
                torch.tensor([0, length], device=device),
                torch.tensor([length], device=device),
                length,
                opts.scale,
                sliding_window=opts.sliding_window,
                logit_softcap=opts.logit_softcap,
                **_quant_args(q, k_cache, scale_zero),
            )
            launches += 1
    return launches


@torch.inference_mode()
def compile_decode_kernels(
    kinds: Iterable[tuple[tuple[int, int, int], Any]],
    kv_caches: list[tuple[torch.Tensor, ...]],
    block_size: int,
    dtype: torch.dtype,
    max_context: int,
) -> int:
    """Run the decode kernel once per split count it may use on contexts of up to
    `max_context` tokens and per kind of attention layer, as `compile_prefill_kernels` does for
    prefill. The decode graphs compile the counts of their batch sizes at the full context; a
    step outside the graphs (decodes beside a prompt) picks its count from its own contexts,
    and the first step with a new one waited ~1 s (benchmark/NOTES.md, session 15). One
    sequence of one token reads the cache's first block; the output is dropped."""
    k_cache, v_cache, scale_zero = _first_layer(kv_caches)
    max_context = min(max_context, k_cache.shape[0] * block_size)
    device = k_cache.device
    launches = 0
    for (heads, _kv_heads, dim), opts in sorted(set(kinds), key=repr):
        q = torch.zeros(1, heads, dim, dtype=dtype, device=device)
        window = opts.sliding_window
        for splits in split_counts_up_to(min(max_context, window or max_context)):
            paged_decode_attention(
                q,
                k_cache,
                v_cache,
                torch.zeros(1, 1, dtype=torch.int64, device=device),
                torch.ones(1, dtype=torch.int64, device=device),
                opts.scale,
                num_splits=splits,
                sliding_window=window,
                logit_softcap=opts.logit_softcap,
                **_quant_args(q, k_cache, scale_zero),
            )
            launches += 1
    return launches
