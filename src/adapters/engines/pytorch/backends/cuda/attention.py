"""Paged attention on CUDA through the Triton kernels of `lmdeploy.kernels`.

Same contract as `layers/attention.paged_attention`: new K/V go to their slots first, then every
query attends to its whole cached context. Only tensors are read (no host lists), so the
decode path can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from ......kernels.kv_cache_write import kv_cache_write
from ......kernels.paged_decode_attention import paged_decode_attention
from ......kernels.paged_prefill_attention import paged_prefill_attention
from ..attention_metadata import AttentionMetadata


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
    value follow from its last dim against the head dim (kernels/kv_quant.py); `kv_written`:
    the rotary kernel already wrote k and v to their slots (k and v may then be None)."""
    bits = 0 if scale_zero is None else k_cache.shape[-1] * 8 // q.shape[-1]
    k_sz, v_sz = scale_zero or (None, None)
    quant = dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits)
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
