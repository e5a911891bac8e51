"""The gated MLP's activations (SiLU-and-mul, GELU-tanh-and-mul) and the logit soft cap,
dispatched once to a backend. Before a W8A8 linear's kernel, SiLU-and-mul quantises its output
too (`quantize_output`)."""

from __future__ import annotations

import torch
from torch import nn

from ..backends import triton_runs_on
from ..backends.cpu import ops as cpu_ops
from ..backends.normed_input import NormedInput
from ..backends.torch_native import ops as torch_ops
from .quantization.quantized_activation import QuantizedActivation


class GatedActivation(nn.Module):
    """act(gate) * up of a gated MLP's [tokens, 2 x inter] gate/up projection."""

    def from_hidden(self, x: torch.Tensor, gate_up_proj: nn.Module) -> torch.Tensor:
        """`forward(gate_up_proj(x))`, where a backend may fuse the two."""
        return self(gate_up_proj(x))


class SiluAndMul(GatedActivation):
    """silu(gate) * up of [tokens, 2 x inter] -> [tokens, inter]. Off CUDA and the C kernel,
    in place in the input's gate half: the projection's output is ours to overwrite."""

    def __init__(self) -> None:
        super().__init__()
        # Set by `fuse_input_quant` where the down projection runs an 8-bit kernel.
        self.quant_dtype: torch.dtype | None = None

    def quantize_output(self, dtype: torch.dtype) -> None:
        """From now on return the output quantised per token to `dtype` (int8 or float8), as
        a `QuantizedActivation`, by the fused Triton kernel."""
        self.quant_dtype = dtype

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor | QuantizedActivation:
        if self.quant_dtype is not None:
            # Triton, as the 8-bit GEMM reading the output is (only set where that kernel runs).
            from ..backends.cuda.ops import silu_and_mul_quant

            q, scales = silu_and_mul_quant(gate_up, self.quant_dtype)
            return QuantizedActivation(q, scales, gate_up.dtype)
        if gate_up.is_cuda:
            from ..backends.cuda.ops import silu_and_mul  # Triton: imported only where it runs

            return silu_and_mul(gate_up)
        if gate_up.is_contiguous() and cpu_ops.available(gate_up):
            return cpu_ops.silu_and_mul(gate_up)
        return torch_ops.silu_and_mul(gate_up)

    def from_hidden(self, x: torch.Tensor | NormedInput, gate_up_proj: nn.Module) -> torch.Tensor:
        """`forward(gate_up_proj(x))`; a one-row step on CUDA whose projection runs the decode
        GEMV may instead do both in one launch (`backends/cuda/gemv_epilogues.py`), the input's
        RMSNorm too where the norm is linked (x a `NormedInput`)."""
        # x may arrive quantized by the norm before a W8A8 gate/up: that linear's kernel runs it.
        fusable = isinstance(x, NormedInput) or (isinstance(x, torch.Tensor) and triton_runs_on(x))
        if fusable and self.quant_dtype is None:
            from ..backends.cuda.gemv_epilogues import project_silu_and_mul  # Triton

            out = project_silu_and_mul(gate_up_proj, x)
            if out is not None:
                return out
        return super().from_hidden(x, gate_up_proj)


class GeluTanhAndMul(GatedActivation):
    """gelu_tanh(gate) * up of [tokens, 2 x inter] -> [tokens, inter] (Gemma's MLP). Torch ops
    on every device, CUDA included: no fused kernel of ours computes it."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return torch_ops.gelu_tanh_and_mul(gate_up)


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap), or x when there is no cap (Gemma 2's final logits). Torch ops on
    every device: one elementwise pass over the logits rows of a step."""
    return x if cap is None else torch_ops.soft_cap(x, cap)
