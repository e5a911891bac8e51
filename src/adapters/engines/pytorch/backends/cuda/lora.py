"""LoRA on CUDA: the step's rows grouped by adapter slot (segments, built on the host), then
two launches per adapted linear whatever its shards: the shrink and the expand."""

from __future__ import annotations

import torch

from ......kernels.lora import lora_expand, lora_segments, lora_shrink

Segments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # order, seg_start, seg_len


def pack_segments(row_slots: list[int], num_slots: int, num_rows: int) -> torch.Tensor:
    """One int32 host tensor [seg_start (num_slots) | seg_len (num_slots) | order (num_rows)]
    of `row_slots` padded with base rows (-1) to `num_rows`: one copy to the device."""
    padded = row_slots + [-1] * (num_rows - len(row_slots))
    order, seg_start, seg_len = lora_segments(padded, num_slots)
    return torch.tensor(seg_start + seg_len + order, dtype=torch.int32)


def split_segments(packed: torch.Tensor, num_slots: int, num_rows: int) -> Segments:
    """Views of a packed buffer (see `pack_segments`) for a step of `num_rows` rows."""
    order = packed[2 * num_slots : 2 * num_slots + num_rows]
    return order, packed[:num_slots], packed[num_slots : 2 * num_slots]


def add_lora(
    x: torch.Tensor,
    out: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    segments: Segments,
    scales: torch.Tensor,
    shard_sizes: list[int],
) -> None:
    """out[t] += scales[s] * (x[t] @ lora_a[s]^T) @ lora_b[s]^T per shard, s = row t's slot."""
    part = lora_shrink(x, lora_a, *segments)
    lora_expand(part, lora_b, *segments, scales, out, shard_sizes)
