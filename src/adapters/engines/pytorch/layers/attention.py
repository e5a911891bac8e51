"""Paged attention, the one dispatch to a backend: the Triton kernels on CUDA; elsewhere the
C decode kernel where it runs and torch ops for the rest (`backends/torch_native`).

All sequences of a step arrive flattened into one token batch. New K/V are written to their
slots first; each sequence then attends to its whole context through its block table.

A layer's cache is `(k_cache, v_cache)`, or with `quant_policy` 8/4 `(k_cache, v_cache,
k_scale_zero, v_scale_zero)`: uint8 caches and their per-token, per-head (scale, zero) pairs
(`lmdeploy.kernels.kv_quant`). Every backend quantizes on write and dequantises on read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..backends import triton_runs_on
from ..backends.attention_metadata import AttentionMetadata, PrefillPart
from ..backends.cpu.attention import cpu_decode_kernel_available, paged_decode_attention_cpu
from ..backends.normed_input import NormedInput
from ..backends.torch_native.attention import (
    ScaleZero,
    decode_attention_torch,
    decode_context,
    prefill_attention,
    write_kv,
)
from ..distributed.parallel_state import local_kv_heads, tp_size
from .graph_break import AttentionCall, current_break
from .kv_rotation import rotation_for
from .norm import RMSNorm
from .rotary import rotate_qk


@dataclass(frozen=True)
class AttentionOptions:
    """What a layer's attention computes besides q.k: the score scale, its window, its cap."""

    scale: float
    sliding_window: int | None = None
    logit_softcap: float | None = None


class Attention(nn.Module):
    """Rotary on q and k, their K/V into the paged cache, then attention: [tokens, heads x dim].

    `sliding_window` W: a query at position p sees keys p - W < pos <= p only (transformers'
    semantics; None: the whole context). `logit_softcap` c: scores = c * tanh(scores / c) after
    the scale (Gemma 2). Both are this layer's: models alternate windowed and global layers.
    Head counts given are the model's; a tensor-parallel rank attends over its own heads."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float | None = None,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        kv_heads = local_kv_heads(num_heads, num_kv_heads)
        self.heads = (num_heads // tp_size(), kv_heads, head_dim)
        self.scale = head_dim**-0.5 if scale is None else scale
        self.options = AttentionOptions(self.scale, sliding_window, logit_softcap)

    def forward(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, ...],
        meta: AttentionMetadata,
        qk_norm: tuple[RMSNorm, RMSNorm] | None = None,
    ) -> torch.Tensor:
        """`qk_norm`: the norms each query and key head goes through before rotary (Qwen3)."""
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        scale_zero = (kv_cache[2], kv_cache[3]) if len(kv_cache) == 4 else None
        q, k, v, written = rotate_qk(
            qkv, cos, sin, self.heads, (k_cache, v_cache), meta.slot_mapping, qk_norm
        )
        spin = rotation_for(k_cache, self.heads[2], q.dtype) if scale_zero is not None else None
        if spin is not None:  # an int4 cache (kv_rotation.py); never written by rotate_qk
            q, k, v = q @ spin, k @ spin, v @ spin
        out = paged_attention(
            q, k, v, k_cache, v_cache, meta, self.options, written, scale_zero=scale_zero
        )
        if spin is not None:
            out = out @ spin.T
        return out.flatten(1)

    def from_hidden(
        self,
        x: torch.Tensor | NormedInput,
        qkv_proj: nn.Module,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, ...],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """`forward(qkv_proj(x), ...)`; a one-row decode step on CUDA may instead project, rotate
        and write K/V in one launch (`backends/cuda/gemv_epilogues.py`), the input's RMSNorm
        too where the norm is linked (x a `NormedInput`)."""
        # x may arrive quantized by the norm before a W8A8 q/k/v: that linear's kernel runs it.
        fusable = isinstance(x, NormedInput) or (isinstance(x, torch.Tensor) and triton_runs_on(x))
        if fusable and meta.is_decode and current_break() is None:
            from ..backends.cuda.gemv_epilogues import project_rotate_write  # Triton: where it runs

            q = project_rotate_write(qkv_proj, x, cos, sin, kv_cache, meta.slot_mapping, self.heads)
            if q is not None:
                k_cache, v_cache = kv_cache
                return paged_attention(
                    q, None, None, k_cache, v_cache, meta, self.options, kv_written=True
                ).flatten(1)
        return self(qkv_proj(x), cos, sin, kv_cache, meta)


def prepare_metadata(meta: AttentionMetadata, block_size: int) -> None:
    """Add what this step's backend reads besides the common fields: query offsets for the
    CUDA kernels; on other devices, the one-token sequences' batched decode inputs."""
    device = meta.block_tables.device

    def tensor(values):
        return torch.tensor(values, dtype=torch.int64, device=device)

    starts = list(itertools.accumulate(meta.query_lens, initial=0))
    single = [i for i, n in enumerate(meta.query_lens) if n == 1]
    if device.type == "cuda":
        meta.cu_seqlens_q = tensor(starts)
        meta.max_query_len = max(meta.query_lens)
        if single and not meta.is_decode:
            split_mixed_step(meta)
        return
    if not single:
        return
    tables, lens = meta.block_tables, meta.context_lens
    if not meta.is_decode:
        rows = tensor(single)
        tables, lens = tables[rows], lens[rows]
        meta.decode_rows = tensor([starts[i] for i in single])
    meta.decode_tables, meta.decode_lens = tables, lens
    # The torch path (any device but a CPU with the C kernel) reads a padded copy.
    if device.type != "cpu" or not cpu_decode_kernel_available():
        max_len = max(meta.context_lens_list[i] for i in single)
        meta.context_slots, meta.context_mask = decode_context(tables, lens, max_len, block_size)


def split_mixed_step(meta: AttentionMetadata) -> None:
    """A step with one-token and longer queries, on CUDA: the one-token sequences go to the
    decode kernel, the others to the prefill kernel, each over its own rows and tables."""
    device = meta.block_tables.device

    def tensor(values):
        return torch.tensor(values, dtype=torch.int64, device=device)

    starts = list(itertools.accumulate(meta.query_lens, initial=0))
    single = [i for i, n in enumerate(meta.query_lens) if n == 1]
    multi = [i for i, n in enumerate(meta.query_lens) if n != 1]
    decode_seqs, prefill_seqs = tensor(single), tensor(multi)
    meta.decode_rows = tensor([starts[i] for i in single])
    meta.decode_tables = meta.block_tables[decode_seqs]
    meta.decode_lens = meta.context_lens[decode_seqs]
    prefill_lens = [meta.query_lens[i] for i in multi]
    meta.prefill_part = PrefillPart(
        rows=tensor([r for i in multi for r in range(starts[i], starts[i + 1])]),
        block_tables=meta.block_tables[prefill_seqs],
        context_lens=meta.context_lens[prefill_seqs],
        cu_seqlens_q=tensor(list(itertools.accumulate(prefill_lens, initial=0))),
        max_query_len=max(prefill_lens),
    )


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    opts: AttentionOptions,
    scale_zero: ScaleZero | None = None,
) -> torch.Tensor:
    """One query token per sequence, q [seqs, heads, dim]: the C kernel where it runs (float
    caches), else the torch path over a padded copy of the contexts."""
    tables, lens = meta.decode_tables, meta.decode_lens
    if tables is None or lens is None:  # metadata built by hand: an all-decode step
        tables, lens = meta.block_tables, meta.context_lens
    window, cap = opts.sliding_window, opts.logit_softcap
    if scale_zero is None:
        out = paged_decode_attention_cpu(q, k_cache, v_cache, tables, lens, opts.scale, window, cap)
        if out is not None:
            return out
    slots, valid = meta.context_slots, meta.context_mask
    if slots is None or valid is None:
        slots, valid = decode_context(tables, lens, int(lens.max()), k_cache.shape[1])
    return decode_attention_torch(
        q, k_cache, v_cache, slots, valid, opts.scale, window, cap, scale_zero
    )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    opts: AttentionOptions,
    kv_written: bool = False,
    scale_zero: ScaleZero | None = None,
) -> torch.Tensor:
    """q: [tokens, heads, dim]; k, v: [tokens, kv_heads, dim]. Returns [tokens, heads, dim].
    `kv_written`: k and v are already in their cache slots (the fused rotary kernels; they may
    then be None).
    `scale_zero`: the (k, v) scale/zero tensors of a quantized (uint8) cache. While piecewise
    graphs are captured, the call goes to their hook instead (layers/graph_break.py)."""
    hook = current_break()
    if hook is not None:
        return hook(AttentionCall(q, k, v, k_cache, v_cache, opts, kv_written, scale_zero))
    window, cap = opts.sliding_window, opts.logit_softcap
    if q.is_cuda:
        from ..backends.cuda.attention import paged_attention_cuda  # Triton: only where it runs

        return paged_attention_cuda(
            q, k, v, k_cache, v_cache, meta, opts.scale, window, cap, scale_zero, kv_written
        )
    if not kv_written:
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping, scale_zero)
    if meta.is_decode:
        return _decode_attention(q, k_cache, v_cache, meta, opts, scale_zero)
    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        assert meta.decode_tables is not None, "decode_rows come with their tables"
        rows = meta.decode_rows
        out[rows] = _decode_attention(q[rows], k_cache, v_cache, meta, opts, scale_zero)
    prefill_attention(out, q, k, v, k_cache, v_cache, meta, opts.scale, window, cap, scale_zero)
    return out
