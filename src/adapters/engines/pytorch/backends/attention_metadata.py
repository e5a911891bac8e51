"""The per-step attention inputs that the runner builds and every attention backend reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillPart:
    """The multi-token sequences of a step that also decodes, for a backend that runs them
    apart from its one-token rows (on CUDA: the prefill kernel tiles queries by 64 rows a
    head, so a one-token row there costs a whole tile and re-reads its context per head)."""

    rows: torch.Tensor  # [tokens] their rows in the step's flat batch
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor  # [seqs + 1] query offsets within `rows`
    max_query_len: int


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
    # CUDA, a step with both one-token and longer queries: the longer ones (see PrefillPart).
    prefill_part: PrefillPart | None = None
