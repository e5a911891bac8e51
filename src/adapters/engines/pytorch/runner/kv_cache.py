"""The paged KV cache tensors of every layer, float or quantized (`quant_policy` 8/4).

A layer's cache is `(k_cache, v_cache)`, `[num_blocks, block_size, kv_heads, head_dim]` in the
model's dtype; quantized it is `(k_cache, v_cache, k_scale_zero, v_scale_zero)`: uint8 caches
of `packed_dim` bytes a head (head_dim, or head_dim / 2 for int4) and each slot's (scale, zero)
in the model's dtype, `[num_blocks, block_size, kv_heads, 2]` (`lmdeploy.kernels.kv_quant`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .....kernels.kv_quant import packed_dim

KVCaches = list[tuple[torch.Tensor, ...]]


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed cache tensor. On the CPU through numpy's calloc: the pages stay unmapped until a
    block is first written, so a cache sized for the worst case (3.2 GB by default) costs
    resident memory only for the blocks in use; `torch.zeros` writes every page up front."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(math.prod(shape) * itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


def kv_bytes_per_token(
    num_layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, quant_policy: int = 0
) -> int:
    """Bytes of one token's K and V in every layer: what a cache budget is divided by."""
    if not quant_policy:
        return 2 * num_layers * kv_heads * head_dim * dtype_bytes
    per_head = packed_dim(head_dim, quant_policy) + 2 * dtype_bytes  # values, then scale+zero
    return 2 * num_layers * kv_heads * per_head


def allocate_kv_caches(
    num_layers: int,
    num_blocks: int,
    block_size: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    quant_policy: int = 0,
) -> KVCaches:
    """Zeroed caches of every layer, float or quantized by `quant_policy` (0, 8 or 4)."""
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if not quant_policy:
        return [
            (_zeros(shape, dtype, device), _zeros(shape, dtype, device)) for _ in range(num_layers)
        ]
    data = (*shape[:3], packed_dim(head_dim, quant_policy))
    pairs = (*shape[:3], 2)
    return [
        (
            _zeros(data, torch.uint8, device),
            _zeros(data, torch.uint8, device),
            _zeros(pairs, dtype, device),
            _zeros(pairs, dtype, device),
        )
        for _ in range(num_layers)
    ]
