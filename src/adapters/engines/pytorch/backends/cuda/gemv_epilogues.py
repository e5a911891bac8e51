"""A one-row decode step's projection and the op after it in one launch, where the projection
runs the decode GEMV (`linear.DecodeGemv`): q/k/v with rotary and the K/V cache write
(kernels/qkv_rotary_gemv.py), gate/up with SiLU-and-mul (kernels/gate_up_silu_gemv.py).

Each function returns None where its launch does not apply, and the caller runs the separate
kernels: where another kernel won the shape's timing at load (cuBLAS, or a K split, whose sums
meet only in the last program), where the projection has hooks (LoRA adds its adapters' output
to the projection's), or where the switch is off (`LMDEPLOY_FUSED_QKV_ROTARY=0`,
`LMDEPLOY_FUSED_GATE_UP_SILU=0`). Imported only where CUDA runs.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ......kernels.gate_up_silu_gemv import gate_up_silu_gemv
from ......kernels.qkv_rotary_gemv import qkv_rotary_gemv
from .linear import DecodeGemv


def _unsplit_gemv(proj: nn.Module, x: torch.Tensor, switch: str) -> DecodeGemv | None:
    """`proj`'s decode GEMV where it would run this call over all of K in one program a tile
    and nothing else sees the call (no hooks), unless the environment turns `switch` off."""
    kernel = getattr(getattr(proj, "method", None), "kernel", None)
    if (
        not isinstance(kernel, DecodeGemv)
        or kernel.config["SPLIT_K"] != 1
        or not kernel.covers(x, proj.weight, proj.kernel_bias())
        or proj._forward_hooks
        or proj._forward_pre_hooks
        or os.environ.get(switch) == "0"
    ):
        return None
    return kernel


def project_rotate_write(
    qkv_proj: nn.Module,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    slot_mapping: torch.Tensor,
    heads: tuple[int, int, int],
) -> torch.Tensor | None:
    """q [tokens, heads, dim] of `qkv_proj(x)`, q and k rotated with the tokens' cos/sin rows,
    k and v written to their slots of an unquantized cache; None where this does not apply."""
    kernel = _unsplit_gemv(qkv_proj, x, "LMDEPLOY_FUSED_QKV_ROTARY")
    if (
        kernel is None
        or heads[2] % kernel.config["BLOCK_N"]  # a tile would span two heads
        or len(kv_cache) != 2  # a quantized cache: quantized on write by its own kernel
        or kv_cache[0].dtype != x.dtype
    ):
        return None
    x2 = x.reshape(-1, x.shape[-1])
    weight, bias = qkv_proj.weight, qkv_proj.kernel_bias()
    return qkv_rotary_gemv(
        x2, weight, bias, heads, cos, sin, kv_cache[0], kv_cache[1], slot_mapping, kernel.config
    )


def project_silu_and_mul(gate_up_proj: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """silu(gate) * up of `gate_up_proj(x)`, whose outputs are [gate; up] in two equal shards;
    None where this does not apply."""
    kernel = _unsplit_gemv(gate_up_proj, x, "LMDEPLOY_FUSED_GATE_UP_SILU")
    shards = list(getattr(gate_up_proj, "shards", {}).values())
    inter = gate_up_proj.weight.shape[0] // 2
    if (
        kernel is None
        or shards != [(0, inter), (inter, inter)]
        or inter % (kernel.config["BLOCK_N"] // 2)
    ):
        return None
    out = gate_up_silu_gemv(
        x.reshape(-1, x.shape[-1]), gate_up_proj.weight, gate_up_proj.kernel_bias(), kernel.config
    )
    return out.view(*x.shape[:-1], inter)
