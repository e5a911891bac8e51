"""SwiGLU's activation quantised per token in the same kernel: `silu(gate) * up` of
`x = cat(gate, up)` [tokens, 2 * d] written as 8-bit codes [tokens, d] and one fp32 scale per
row, the input of a W8A8 down projection (LMDeploy's W8A8 fuses the same).

Each row is what the unfused pair computes: `y = silu(gate) * up` rounded to x's dtype, then
`q = quantize(y / s)`, `s = max(|y|, eps) / QMAX` (`per_token_quant.py`).

Grid `(tokens,)`, `BLOCK = next_pow2(d)`: the row's products stay in registers between the
maximum and the quantisation, so gate and up are read once (d = 14336 for an 8B model: 16
warps hold it). Bytes per row: 2 d e + d + 4; the unfused pair moves 3 d e + d (e + 1) + 4.
FLOPs ~= 7 d. Bandwidth-bound, one launch instead of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .per_token_quant import EPS, per_token_quant_ref, qmax, quantize
from .silu_and_mul import silu_and_mul_ref

_MAX_D = 65536


@triton.jit
def _silu_and_mul_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    d,
    stride_x,
    stride_q,
    quant_eps,
    QMAX: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < d
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + d + offs, mask=mask, other=0.0)
    g32 = gate.to(tl.float32)
    # Rounded to the activation dtype first: the codes are those of the unfused output.
    y = (g32 * tl.sigmoid(g32) * up.to(tl.float32)).to(gate.dtype).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(y), axis=0), quant_eps) / QMAX
    tl.store(s_ptr + row, scale)
    q = quantize(y, scale, QMAX, IS_INT)
    tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_quant(
    x: torch.Tensor, dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., 2 * d] -> (codes [..., d] of `dtype` (int8 or float8_e4m3fn), scales [..., 1]
    fp32)."""
    assert x.shape[-1] % 2 == 0, f"last dim {x.shape[-1]} must be even: cat(gate, up)"
    d = x.shape[-1] // 2
    assert d <= _MAX_D, f"d {d} > {_MAX_D}: split the row first"
    limit = qmax(dtype)
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    q = torch.empty(x2.shape[0], d, dtype=dtype, device=x.device)
    scales = torch.empty(x2.shape[0], 1, dtype=torch.float32, device=x.device)
    if x2.shape[0] and d:
        block = triton.next_power_of_2(d)
        _silu_and_mul_quant_kernel[(x2.shape[0],)](
            x2,
            q,
            scales,
            d,
            x2.stride(0),
            q.stride(0),
            EPS,
            QMAX=limit,
            IS_INT=dtype == torch.int8,
            BLOCK=block,
            num_warps=min(16, max(1, block // 512)),
        )
    return q.view(*x.shape[:-1], d), scales.view(*x.shape[:-1], 1)


def silu_and_mul_quant_ref(
    x: torch.Tensor, dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused composition the kernel stands for."""
    return per_token_quant_ref(silu_and_mul_ref(x), dtype)
