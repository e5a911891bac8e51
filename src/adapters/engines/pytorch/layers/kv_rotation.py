"""An orthogonal rotation of each head's query, key and value around an int4 KV cache.

An int4 cache keeps one scale and zero point per token and head: 16 levels for every channel of
the head. A few outlier channels (keys are large on some dims of every token) take most of that
range and leave the others a level or two. Rotating each head by an orthonormal Hadamard
matrix H spreads the outliers over all channels (QuaRot's idea) and changes no result in exact
arithmetic: (qH)(kH)^T = q k^T, and softmax(.) (vH) H^T = softmax(.) v. So the cache holds kH
and vH, attention runs on qH, and its output is turned back by H^T. The int8 cache, near
lossless already, is left as it is.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=16)
def head_rotation(head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[head_dim, head_dim], orthonormal: Sylvester's Hadamard matrix scaled by 1/sqrt(d) when
    head_dim is a power of two, else a fixed random orthogonal matrix (QR of a seeded Gaussian)."""
    if head_dim & (head_dim - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < head_dim:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        h = h / head_dim**0.5
    else:
        gen = torch.Generator().manual_seed(head_dim)
        h, _ = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=gen, dtype=torch.float64))
    return h.to(dtype=dtype, device=device)


def rotation_for(k_cache: torch.Tensor, head_dim: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The rotation a layer applies around its cache: for an int4 cache (two values a byte:
    head_dim / 2 bytes a head), else None."""
    if k_cache.dtype != torch.uint8 or k_cache.shape[-1] * 2 != head_dim:
        return None
    return head_rotation(head_dim, dtype, k_cache.device)
