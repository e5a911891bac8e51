"""Float32 linears with oneDNN-prepacked weights, for inference on the CPU.

`nn.Linear` on the CPU calls MKL sgemm on the plain `[out, in]` weight. At the row counts of
decoding (1 to 64 tokens) that streams the weights at 6 to 12 GB/s; oneDNN, given the weight
once reordered into its blocked layout, gets 1.3x (1 row) to 2x (16 rows) more from the same
bytes and stays ahead at prefill sizes (benchmark/NOTES.md). Same precision: float32 in,
float32 accumulate, float32 out; only the summation order differs, as between any two GEMMs.

Applied to a loaded model, as a transformation (`layers/linear.py`): the packed weight replaces
the parameter, so the model keeps one copy of each matrix (plus one for a tied LM head). Where the AVX2 skinny
GEMM runs (`skinny_gemm.py`), each matrix also gets its 16-column panels, and a step of at most
16 rows (decoding) goes through them: 1.0-1.9x oneDNN at 16 rows, 1.4-2x at one, for a second
copy of the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from . import skinny_gemm


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's blocked layout (an opaque `torch._mkldnn` tensor)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = None if bias is None else bias.detach()
        self.panels = skinny_gemm.pack(weight) if skinny_gemm.available() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.panels is not None
            and x.dim() == 2
            and x.shape[0] <= skinny_gemm.MAX_ROWS
            and x.stride(1) == 1
        ):
            y = skinny_gemm.matmul(x, self.panels, self.out_features)
            return y if self.bias is None else y.add_(self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"
