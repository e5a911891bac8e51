"""SiLU-and-mul (the gated MLP's activation), dispatched once to a backend."""

from __future__ import annotations

import torch
from torch import nn

from ..backends.cpu import ops as cpu_ops
from ..backends.torch_native import ops as torch_ops


class SiluAndMul(nn.Module):
    """silu(gate) * up of [tokens, 2 x inter] -> [tokens, inter]. Off CUDA and the C kernel,
    in place in the input's gate half: the projection's output is ours to overwrite."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.is_cuda:
            from ..backends.cuda.ops import silu_and_mul  # Triton: imported only where it runs

            return silu_and_mul(gate_up)
        if gate_up.is_contiguous() and cpu_ops.available(gate_up):
            return cpu_ops.silu_and_mul(gate_up)
        return torch_ops.silu_and_mul(gate_up)
