"""RMSNorm, alone or fused with the residual add before it, dispatched once to a backend: the
Triton kernels on CUDA, the C kernels on a CPU in float32, torch ops elsewhere."""

from __future__ import annotations

import torch
from torch import nn

from ..backends.cpu import ops as cpu_ops
from ..backends.torch_native import ops as torch_ops


def _ops(x: torch.Tensor):
    if x.is_cuda:
        from ..backends.cuda import ops as cuda_ops  # Triton: imported only where it runs

        return cuda_ops
    return cpu_ops if cpu_ops.available(x) else torch_ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm(x); with `residual`, (RMSNorm(residual + x), residual + x), the sum written
        into `residual` in place by the fused kernels (the residual stream is the caller's)."""
        ops = _ops(x)
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm, x * (1 + weight) in float32 (its weight is stored as an offset from
    one), alone or fused with the residual add as `RMSNorm`. Torch ops on every device: the
    fused kernels round before the weight, as Llama does, so they would not give Gemma's
    numbers in half precision."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return torch_ops.gemma_rms_norm(x, self.weight, self.eps)
        return torch_ops.fused_add_gemma_rms_norm(x, residual, self.weight, self.eps)
