"""RMSNorm, and residual-add fused with RMSNorm, one row per program, fp32 math.

`rms_norm(x) = x / sqrt(mean(x^2) + eps) * weight`. `fused_add_rms_norm(x, residual)` first forms
`new_residual = x + residual` (rounded to the residual's dtype, as the unfused code stores it),
then normalises it: one pass instead of an add kernel and a norm kernel.

Grid `(rows,)`, `BLOCK = next_pow2(hidden)`: the whole row stays in registers, so each element
is read once. Bytes: rms_norm 2 * rows * hidden * e (+ the weight, once via L2);
fused_add_rms_norm 4 * rows * hidden * e (x, residual in; normed, new_residual out).
FLOPs ~= 4 * rows * hidden. Bandwidth-bound: target bytes / ~3 TB/s on the H100.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release

_MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    new_residual_ptr,
    hidden,
    eps,
    stride_x,
    stride_r,
    stride_o,
    stride_nr,
    ADD_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    # The norm weight is written by nobody during a step: loaded before the wait.
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    pdl_wait_then_release(PDL)
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if ADD_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0)
        summed = (x + r.to(tl.float32)).to(new_residual_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * stride_nr + offs, summed, mask=mask)
        x = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    tl.store(
        out_ptr + row * stride_o + offs, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask
    )


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    rows = t.reshape(-1, hidden)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x, residual, weight, eps):
    hidden = x.shape[-1]
    assert weight.shape == (hidden,), f"weight {tuple(weight.shape)} must be [{hidden}]"
    assert hidden <= _MAX_HIDDEN, f"hidden {hidden} > {_MAX_HIDDEN}: split the row first"
    x2 = _rows(x, hidden)
    r2 = _rows(residual, hidden) if residual is not None else x2
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    new_r = torch.empty(r2.shape, dtype=r2.dtype, device=x.device) if residual is not None else out
    if x2.shape[0]:
        block = triton.next_power_of_2(hidden)
        pdl = pdl_enabled(x.device)
        _rms_norm_kernel[(x2.shape[0],)](
            x2,
            r2,
            weight,
            out,
            new_r,
            hidden,
            eps,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            new_r.stride(0),
            ADD_RESIDUAL=residual is not None,
            BLOCK=block,
            PDL=pdl,
            num_warps=min(16, max(1, block // 256)),
            **pdl_launch_options(pdl),
        )
    return out.view(x.shape), new_r.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., hidden]; weight: [hidden]. Returns x's shape and dtype."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual); inputs are left untouched."""
    assert x.shape == residual.shape, f"x {tuple(x.shape)} != residual {tuple(residual.shape)}"
    return _launch(x, residual, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (x32 * weight.float()).to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    new_residual = (x.float() + residual.float()).to(residual.dtype)
    return rms_norm_ref(new_residual, weight, eps).to(x.dtype), new_residual
