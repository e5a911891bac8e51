"""The implementations the layers dispatch to: cuda (Triton), cpu (C kernels), torch_native."""

from __future__ import annotations

import os

import torch


def triton_runs_on(t: torch.Tensor) -> bool:
    """Whether the Triton kernels (backends/cuda) take `t`: a CUDA tensor, or any tensor under
    Triton's interpreter (`TRITON_INTERPRET=1`), as the tests run them without a GPU. A path
    chosen this way must be one the CPU engine never reaches otherwise (it is chosen at load
    only on CUDA), so that the interpreter changes no CPU result."""
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
