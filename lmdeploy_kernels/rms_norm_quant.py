"""RMSNorm (after the residual add, optionally) quantised per token in the same kernel: the
input of a W8A8 q/k/v or gate/up linear, written as 8-bit codes and one fp32 scale per row
instead of a bf16 row that `per_token_quant` would read back (LMDeploy's W8A8 fuses the same).

Each row is what the unfused pair computes: `y = rms_norm(x [+ residual])` rounded to x's
dtype, then `q = quantize(y / s)`, `s = max(|y|, eps) / QMAX` (`per_token_quant.py`). With a
residual, `new_residual = x + residual` is written too, as `fused_add_rms_norm` writes it.

Grid `(rows,)`, `BLOCK = next_pow2(hidden)`: the row stays in registers between the sum of
squares, the maximum and the quantisation, so each element is read once. Bytes per row:
hidden * (e + 1) + 4 (x in, codes and scale out), + 2 * hidden * e with the residual; the
unfused pair moves hidden * (3e + 1) + 4. FLOPs ~= 6 * hidden. Bandwidth-bound, one launch
instead of two: at decode sizes the launch is most of the cost.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .per_token_quant import EPS, per_token_quant_ref, qmax, quantize
from .rms_norm import fused_add_rms_norm_ref, rms_norm_ref

_MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_quant_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    q_ptr,
    s_ptr,
    new_residual_ptr,
    hidden,
    eps,
    quant_eps,
    stride_x,
    stride_r,
    stride_q,
    stride_nr,
    ADD_RESIDUAL: tl.constexpr,
    QMAX: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    x32 = x.to(tl.float32)
    if ADD_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0)
        summed = (x32 + r.to(tl.float32)).to(new_residual_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * stride_nr + offs, summed, mask=mask)
        x32 = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Rounded to the activation dtype first: the codes are those of the unfused norm's output.
    y = (x32 * rstd * w).to(x.dtype).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(y), axis=0), quant_eps) / QMAX
    tl.store(s_ptr + row, scale)
    q = quantize(y, scale, QMAX, IS_INT)
    tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    rows = t.reshape(-1, hidden)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    dtype: torch.dtype = torch.int8,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x [..., hidden], weight [hidden] -> (codes [..., hidden] of `dtype` (int8 or
    float8_e4m3fn), scales [..., 1] fp32, x + residual or None without a residual). Inputs are
    left untouched."""
    hidden = x.shape[-1]
    assert weight.shape == (hidden,), f"weight {tuple(weight.shape)} must be [{hidden}]"
    assert hidden <= _MAX_HIDDEN, f"hidden {hidden} > {_MAX_HIDDEN}: split the row first"
    if residual is not None:
        assert x.shape == residual.shape, f"x {tuple(x.shape)} != residual {tuple(residual.shape)}"
    limit = qmax(dtype)
    x2 = _rows(x, hidden)
    r2 = _rows(residual, hidden) if residual is not None else x2
    q = torch.empty(x2.shape, dtype=dtype, device=x.device)
    scales = torch.empty(x2.shape[0], 1, dtype=torch.float32, device=x.device)
    new_r = torch.empty_like(r2) if residual is not None else None
    if x2.shape[0]:
        block = triton.next_power_of_2(hidden)
        nr = new_r if new_r is not None else r2  # unwritten without ADD_RESIDUAL
        _rms_norm_quant_kernel[(x2.shape[0],)](
            x2,
            r2,
            weight,
            q,
            scales,
            nr,
            hidden,
            eps,
            EPS,
            x2.stride(0),
            r2.stride(0),
            q.stride(0),
            nr.stride(0),
            ADD_RESIDUAL=residual is not None,
            QMAX=limit,
            IS_INT=dtype == torch.int8,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return (
        q.view(x.shape),
        scales.view(*x.shape[:-1], 1),
        None if new_r is None else new_r.view(x.shape),
    )


def rms_norm_quant_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    dtype: torch.dtype = torch.int8,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The unfused composition the kernel stands for."""
    if residual is None:
        normed, new_residual = rms_norm_ref(x, weight, eps), None
    else:
        normed, new_residual = fused_add_rms_norm_ref(x, residual, weight, eps)
    q, scales = per_token_quant_ref(normed, dtype)
    return q, scales, new_residual
