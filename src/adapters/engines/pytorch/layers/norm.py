"""RMSNorm, alone or fused with the residual add before it, dispatched once to a backend: the
Triton kernels on CUDA, the C kernels on a CPU in float32, torch ops elsewhere. Before a W8A8
linear's kernel, the norm quantises its output too (`quantize_output`)."""

from __future__ import annotations

import torch
from torch import nn

from ..backends.cpu import ops as cpu_ops
from ..backends.torch_native import ops as torch_ops
from .quantization.quantized_activation import QuantizedActivation


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
        # Set by `fuse_input_quant` where the one linear reading this norm runs an 8-bit kernel.
        self.quant_dtype: torch.dtype | None = None

    def quantize_output(self, dtype: torch.dtype) -> None:
        """From now on return the output quantised per token to `dtype` (int8 or float8), as
        a `QuantizedActivation`, by the fused Triton kernel."""
        self.quant_dtype = dtype

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> (
        torch.Tensor | QuantizedActivation | tuple[torch.Tensor | QuantizedActivation, torch.Tensor]
    ):
        """RMSNorm(x); with `residual`, (RMSNorm(residual + x), residual + x), the sum written
        into `residual` in place by the fused kernels (the residual stream is the caller's)."""
        if self.quant_dtype is not None:
            return self._quantized(x, residual)
        ops = _ops(x)
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _quantized(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> QuantizedActivation | tuple[QuantizedActivation, torch.Tensor]:
        # Triton, as the 8-bit GEMM reading the output is (only set where that kernel runs).
        from ..backends.cuda.ops import rms_norm_quant

        q, scales, summed = rms_norm_quant(x, self.weight, self.eps, self.quant_dtype, residual)
        out = QuantizedActivation(q, scales, x.dtype)
        return out if residual is None else (out, summed)


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
