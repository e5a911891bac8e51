"""Dynamic per-token quantisation of activations: each row of `x [M, K]` scaled by its own
absolute maximum into int8 (SmoothQuant's W8A8) or float8 e4m3 (FP8 W8A8).

`q = x / s` rounded (int8: to nearest, halves away from zero) and clamped to the type's range,
`s = max(|x_row|, eps) / QMAX`, one fp32 scale per row. Grid `(M,)`: one program reads its
row once to find the maximum and once more to quantise. Bytes = M * K * (e + 1) + 4 M;
bandwidth-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# eps keeps an all-zero row (padding) from dividing by zero; 0.6.5's W8A8 uses the same.
EPS = 1e-7


def qmax(dtype: torch.dtype) -> float:
    """The largest magnitude the quantised type holds: 127 for int8, 448 for e4m3."""
    if dtype == torch.int8:
        return 127.0
    if dtype == torch.float8_e4m3fn:
        return float(torch.finfo(dtype).max)
    raise ValueError(f"per-token quantisation supports int8 and float8_e4m3fn, not {dtype}")


@triton.jit
def quantize(y, scale, QMAX: tl.constexpr, IS_INT: tl.constexpr):
    """fp32 `y` over its row's `scale` to the 8-bit code's value (still fp32): int8 rounds to
    nearest, halves away from zero; both clamp to +-QMAX. Shared with the fused kernels that
    quantise their own output (`rms_norm_quant.py`, `silu_and_mul_quant.py`)."""
    q = y / scale
    if IS_INT:
        q = tl.where(q >= 0, tl.floor(q + 0.5), tl.ceil(q - 0.5))
    return tl.minimum(tl.maximum(q, -QMAX), QMAX)


@triton.jit
def _per_token_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    K,
    stride_xm,
    stride_qm,
    eps,
    QMAX: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        x = tl.load(x_ptr + row * stride_xm + start + offs, mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    scale = tl.maximum(tl.max(amax, axis=0), eps) / QMAX
    tl.store(s_ptr + row, scale)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        x = tl.load(x_ptr + row * stride_xm + start + offs, mask=mask, other=0.0)
        q = quantize(x.to(tl.float32), scale, QMAX, IS_INT)
        tl.store(q_ptr + row * stride_qm + start + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def per_token_quant(
    x: torch.Tensor, dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (q [..., K] of `dtype`, scales [..., 1] fp32), x ~= q * scales."""
    limit = qmax(dtype)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows, k = x2.shape
    q = torch.empty(num_rows, k, dtype=dtype, device=x.device)
    scales = torch.empty(num_rows, 1, dtype=torch.float32, device=x.device)
    if num_rows and k:
        block = min(4096, triton.next_power_of_2(k))
        _per_token_quant_kernel[(num_rows,)](
            x2,
            q,
            scales,
            k,
            x2.stride(0),
            q.stride(0),
            EPS,
            QMAX=limit,
            IS_INT=dtype == torch.int8,
            BLOCK=block,
            num_warps=min(max(block // 256, 1), 8),
        )
    return q.view(x.shape), scales.view(*x.shape[:-1], 1)


def per_token_quant_ref(
    x: torch.Tensor, dtype: torch.dtype = torch.int8
) -> tuple[torch.Tensor, torch.Tensor]:
    limit = qmax(dtype)
    scales = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=EPS) / limit
    q = x.float() / scales
    if dtype == torch.int8:
        q = q.sign() * (q.abs() + 0.5).floor()  # halves away from zero, as the kernel rounds
    return q.clamp(-limit, limit).to(dtype), scales


def fake_per_token_quant(x: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """x quantised per token and straight back to x's dtype: what the GPU's W8A8 GEMM sees,
    for a CPU path that multiplies in floating point."""
    q, scales = per_token_quant_ref(x, dtype)
    return (q.float() * scales).to(x.dtype)
