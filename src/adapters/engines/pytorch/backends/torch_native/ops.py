"""The model's elementwise work in plain torch ops: the path of any device and dtype without
fused kernels (a CPU without a C compiler, bfloat16 on a CPU), and the kernels' reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def fused_add_rms_norm(
    h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(residual + h), residual + h), as the fused kernels return them."""
    residual = residual + h
    return rms_norm(residual, weight, eps), residual


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: x * (1 + weight), all in float32 and rounded once at the end (Llama's
    rounds before the weight)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * (1.0 + weight.float())).to(x.dtype)


def fused_add_gemma_rms_norm(
    h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(GemmaRMSNorm(residual + h), residual + h)."""
    residual = residual + h
    return gemma_rms_norm(residual, weight, eps), residual


def gelu_tanh_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up of [tokens, 2 x inter] (transformers' gelu_pytorch_tanh)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh").mul_(up)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): x squashed into (-cap, cap), near the identity for small x."""
    return (x / cap).tanh_().mul_(cap)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of [tokens, 2 x inter], in place in the gate half: the projection's
    output is ours to overwrite, and a fresh buffer per op was a tenth of a CPU prefill."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate, inplace=True).mul_(up)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos/sin: [tokens, head_dim] already indexed by position.

    `x * cos + rotate_half(x) * sin`, as HF writes it, with the rotate-half term added per half
    in place: bit for bit the same numbers (negating a product and adding is subtracting it),
    without the concatenated copy and its temporaries (about 2% of a CPU prefill).
    """
    half = x.shape[-1] // 2
    x32 = x.float()
    out = x32 * cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    out[..., :half] -= x32[..., half:] * sin[..., :half]
    out[..., half:] += x32[..., :half] * sin[..., half:]
    return out.to(x.dtype)
