"""The model's elementwise work on CUDA as fused Triton kernels (fewer, larger launches).

Torch spells RMSNorm, rotary and SiLU-and-mul as chains of small kernels; in a decode step of
an 8B model those chains were most of the kernel count. Imported only where CUDA runs.
"""

from __future__ import annotations

import torch

from ......kernels.rms_norm import fused_add_rms_norm, rms_norm
from ......kernels.rms_norm_quant import rms_norm_quant
from ......kernels.rotary import rotary
from ......kernels.silu_and_mul import silu_and_mul
from ......kernels.silu_and_mul_quant import silu_and_mul_quant
from ......kernels.w4a16_gemm import pack_int4_rows, w4a16_gemm

__all__ = [
    "fused_add_rms_norm",
    "pack_int4_rows",
    "rms_norm",
    "rms_norm_quant",
    "rotary_qk",
    "silu_and_mul",
    "silu_and_mul_quant",
    "w4a16_gemm",
]


def rotary_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    kv_write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Rotate q [tokens, heads, dim] and k [tokens, kv_heads, dim] in place (cos/sin per token),
    each head RMS-normalized first with `qk_norm` (q weight, k weight, eps); with `kv_write`
    (v, k_cache, v_cache, slot_mapping) the rotated k and v also go to their cache slots."""
    rotary(q, k, cos, sin, positions=None, inplace=True, qk_norm=qk_norm, kv_write=kv_write)
