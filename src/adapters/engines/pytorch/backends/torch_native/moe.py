"""The mixture-of-experts MLP in torch ops (any device without the Triton kernel), and the
routing every device shares (`route`, plain torch in the kernel's module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ......kernels.fused_moe import route
from .ops import silu_and_mul

__all__ = ["fused_moe_torch", "route"]


def fused_moe_torch(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """`fused_moe`'s contract (hidden [T, H], w13 [E, 2 * I, H], w2 [E, H, I], topk_* [T, k])
    by a loop over the experts this batch routes to, each on the rows of its tokens: a decode
    step reads only the picked experts' weights, and the loop is at most E long whatever T is.
    Sums in float32, as the kernel does."""
    num_experts, top_k = w13.shape[0], topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    tokens = order // top_k
    weights = topk_weights.reshape(-1)[order].unsqueeze(1)
    counts = torch.bincount(flat, minlength=num_experts).tolist()  # the one host sync
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = tokens[start : start + count]
        x = hidden.index_select(0, rows)
        y = F.linear(silu_and_mul(F.linear(x, w13[expert])), w2[expert])
        out.index_add_(0, rows, y.float() * weights[start : start + count])
        start += count
    return out.to(hidden.dtype)
