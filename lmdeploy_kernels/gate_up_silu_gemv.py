"""SwiGLU's gate/up projection of a decode step with its activation in one launch:
`silu(x @ W_gate^T) * (x @ W_up^T)` through `dense_gemv`'s tiles, W = [W_gate; W_up].

At batch 1 the SiLU-and-mul kernel between the gate/up and down projections moved ~86 KB and
cost a link of the layer's chain of short launches (benchmark/NOTES.md). Folding it into the
down projection's prologue would make each of its programs read both halves of the input; here
each program of the gate/up GEMV takes its rows in pairs instead, gate row j with up row
inter + j, and writes silu(gate) * up for its j: no byte more is read.

The gate and up sums are rounded to the activations' dtype before the activation, as the GEMV
would store them for the SiLU-and-mul kernel to read back, so the one launch computes what the
two did.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dense_gemv import MAX_ROWS, gemv_row_pairs, rms_args
from .pdl import pdl_enabled, pdl_launch_options


@triton.jit
def _gate_up_silu_gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    M,
    K,
    inter,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_om,
    eps,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program i: outputs j = i * BLOCK_N / 2 + [0, BLOCK_N / 2), from gate rows j and up rows
    inter + j (BLOCK_N / 2 divides inter)."""
    PAIRS: tl.constexpr = BLOCK_N // 2
    j = tl.program_id(0) * PAIRS + tl.arange(0, PAIRS)
    gate, up = gemv_row_pairs(
        x_ptr, w_ptr, bias_ptr, j, inter, M, K, stride_xm, stride_xk, stride_wn, stride_wk,
        eps, HAS_BIAS, EVEN_K, BLOCK_M, BLOCK_K, NORM, PDL,
    )  # fmt: skip
    out = gate * tl.sigmoid(gate) * up  # silu_and_mul.py's expression
    offs_m = tl.arange(0, BLOCK_M)
    mask = (offs_m < M)[:, None] & (j < inter)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + j[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


def gate_up_silu_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    rms_eps: float | None = None,
) -> torch.Tensor:
    """x [tokens, K] (tokens <= `MAX_ROWS`), weight [2 inter, K] = [gate; up] (+ bias [2 inter])
    -> silu(gate) * up [tokens, inter] in x's dtype. `config`: the GEMV's tiles (BLOCK_N,
    BLOCK_K, num_warps; `[4, 1024]`, 4 warps by default), without a K split. `rms_eps`: of
    x / rms(x), as `dense_gemv` takes it."""
    tokens, k = x.shape
    n = weight.shape[0]
    inter = n // 2
    cfg = dict(config or {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4})
    cfg.pop("SPLIT_K", None)
    assert 0 < tokens <= MAX_ROWS, f"{tokens} tokens: the GEMV takes 1..{MAX_ROWS}"
    assert weight.shape == (n, k) and weight.stride(1) == 1 and n % 2 == 0, (
        f"weight {tuple(weight.shape)} is not [2 inter, {k}] contiguous along K"
    )
    assert bias is None or bias.shape == (n,), f"bias {tuple(bias.shape)} is not [{n}]"
    assert inter % (cfg["BLOCK_N"] // 2) == 0, (
        f"BLOCK_N {cfg['BLOCK_N']} must take whole pairs of the {inter} gate/up rows"
    )
    out = torch.empty(tokens, inter, dtype=x.dtype, device=x.device)
    pdl = pdl_enabled(x.device)
    _gate_up_silu_gemv_kernel[(2 * inter // cfg["BLOCK_N"],)](
        x, weight, bias if bias is not None else weight, out, tokens, k, inter, *x.stride(),
        *weight.stride(), out.stride(0), **rms_args(rms_eps),
        HAS_BIAS=bias is not None,
        EVEN_K=k % cfg["BLOCK_K"] == 0, BLOCK_M=triton.next_power_of_2(tokens), PDL=pdl,
        **cfg, **pdl_launch_options(pdl),
    )  # fmt: skip
    return out
