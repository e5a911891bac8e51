"""LoRA on CUDA: the shrink kernel once for all shards, the expand kernel once per shard."""

from __future__ import annotations

import torch

from ......kernels.lora import lora_expand, lora_shrink


def add_lora(
    x: torch.Tensor,
    out: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slots: torch.Tensor,
    scales: torch.Tensor,
    shards: list[tuple[int, int]],
    rank: int,
) -> None:
    """out[t] += scales[s] * (x[t] @ lora_a[s]^T) @ lora_b[s]^T per shard, s = slots[t]."""
    xa = lora_shrink(x, lora_a, slots)
    for i, (start, size) in enumerate(shards):
        lora_expand(xa, lora_b, slots, scales, out, start, size, i * rank)
