"""Dense half-precision GEMV for decode: y [M, N] = x [M, K] @ W [N, K]^T (+ bias), M <= 4,
W row-major as `nn.Linear` holds it (no re-layout), fp32 accumulation.

At one row, a linear is bound by reading W once: bytes ~= 2 N K + 2 (M K + M N), FLOPs =
2 M N K. cuBLAS reaches ~100% of the byte floor on the wide gate/up projections but 58-88% on
the q/k/v, o and down ones of an 8B model (benchmark/NOTES.md), whose output tiles alone do
not keep 132 SMs' loads in flight. This kernel gives each program a [BLOCK_N, BLOCK_K] tile of
W read 16 contiguous bytes a thread along K, multiplies it into an fp32 accumulator of the
tile's shape (the sum over K stays elementwise in registers: one FFMA a weight per row of x),
loads the next tile before it multiplies this one, and reduces across threads once, at the
end. K is split over programs until there are a few a SM; the program that finishes a column
tile last adds the fp32 partial sums in split order (deterministic, one launch: the split-K
reduction of `w4a16_gemm`). Whether it beats cuBLAS is measured per shape at load
(backends/cuda/linear.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The split-K helpers of the W4A16 kernels: the same counters and the same last-program sum.
from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release
from .w4a16_gemm import MAX_COLUMN_TILES, NUM_SMS, _split_counters, _split_tiles, _store_or_reduce

MAX_ROWS = 4  # beyond this many rows of x the weight is no longer the only cost: cuBLAS


@triton.jit
def gemv_tile(
    x_ptr,
    w_ptr,
    rows,
    M,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    first,
    last,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PDL: tl.constexpr,
):
    """x's rows [BLOCK_M] against W's `rows` [BLOCK_N] over the K tiles [first, last): the fp32
    sums [BLOCK_M, BLOCK_N], and with NORM each row's sum of squares [BLOCK_M] (else zeros),
    from the x tiles already in registers: the rows' 1 / rms for an RMSNorm of x (`rms_scale`),
    known only once all of K is read. `rows` may be any row indices of W (each row is read
    contiguous along K). With PDL the first weight tile is loaded before the wait (weights are
    written by no kernel of the step) and x only after it."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows[None, :, None] * stride_wn + (first * BLOCK_K + offs_k)[None, None, :]
    x_ptrs = x_ptr + offs_m[:, None, None] * stride_xm + (first * BLOCK_K + offs_k)[None, None, :]
    w_step = BLOCK_K * stride_wk
    m_mask = (offs_m < M)[:, None, None]
    acc = tl.zeros((BLOCK_M, rows.shape[0], BLOCK_K), dtype=tl.float32)
    squares = tl.zeros((BLOCK_M, 1, BLOCK_K), dtype=tl.float32)
    k0 = first * BLOCK_K
    # A tensor, not a scalar, as the mask: the interpreter takes no scalar mask.
    has_tile = tl.full((1, 1, 1), first, tl.int32) < last
    if EVEN_K:
        w_next = tl.load(w_ptrs, mask=has_tile, other=0.0)
    else:
        w_next = tl.load(w_ptrs, mask=has_tile & (k0 + offs_k < K)[None, None, :], other=0.0)
    pdl_wait_then_release(PDL)
    for tile in range(first, last):
        w = w_next
        w_ptrs += w_step
        k0 = tile * BLOCK_K
        # The next tile is in flight while this one is multiplied.
        has_tile = tl.full((1, 1, 1), tile + 1, tl.int32) < last
        if EVEN_K:
            w_next = tl.load(w_ptrs, mask=has_tile, other=0.0)
            x = tl.load(x_ptrs, mask=m_mask, other=0.0).to(tl.float32)
        else:
            k_next = (k0 + BLOCK_K + offs_k < K)[None, None, :]
            w_next = tl.load(w_ptrs, mask=has_tile & k_next, other=0.0)
            x = tl.load(x_ptrs, mask=m_mask & (k0 + offs_k < K)[None, None, :], other=0.0)
            x = x.to(tl.float32)
        x_ptrs += BLOCK_K * stride_xk
        if NORM:
            squares += x * x
        acc += x * w.to(tl.float32)
    return tl.sum(acc, axis=2), tl.sum(tl.sum(squares, axis=2), axis=1)


@triton.jit
def rms_scale(sum_squares, K, eps):
    """1 / rms of rows whose squares over all K columns sum to `sum_squares`."""
    return tl.rsqrt(sum_squares / K + eps)


@triton.jit
def gemv_row_pairs(
    x_ptr,
    w_ptr,
    bias_ptr,
    rows,
    pair_offset,
    M,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    eps,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PDL: tl.constexpr,
):
    """The outputs of W's `rows` [P] and of `rows + pair_offset`, over the whole of K (+ bias),
    rounded to x's dtype as `_dense_gemv_kernel` stores them and returned as fp32: two
    [BLOCK_M, P]. For an epilogue that combines two rows of one output (rotary's halves of a
    head, SwiGLU's gate and up) in the program that computed them. With NORM, of x / rms(x)
    (`eps`) as `_dense_gemv_kernel` computes it."""
    both = tl.reshape(tl.join(rows, rows + pair_offset), (2 * rows.shape[0],))
    acc, sum_squares = gemv_tile(
        x_ptr, w_ptr, both, M, K, stride_xm, stride_xk, stride_wn, stride_wk,
        0, tl.cdiv(K, BLOCK_K), EVEN_K, BLOCK_M, BLOCK_K, NORM, PDL,
    )  # fmt: skip
    if NORM:
        acc *= rms_scale(sum_squares, K, eps)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + both).to(tl.float32)[None, :]
    acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
    return tl.split(tl.reshape(acc, (BLOCK_M, rows.shape[0], 2)))


@triton.jit
def _dense_gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    partial_ptr,
    out_ptr,
    counter_ptr,
    residual_ptr,
    eps,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_om,
    stride_on,
    stride_rm,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (column tile, split): W's rows [BLOCK_N] over this split's K tiles, against every
    row of x. Rows of W past N read row N - 1 (wrapped, not masked: the loads stay unpredicated
    and 16 bytes wide) and are never stored. x, the partials and the split counters (reset by
    the last program of the previous GEMV) are touched only after the PDL wait.

    Without a K split, NORM takes x / rms(x) for x and HAS_RESIDUAL adds the residual [M, N] to
    the output, rounded as the norm's residual add rounds (`rms_norm.py`)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    first, last = _split_tiles(pid_k, K, BLOCK_K, SPLIT_K)
    rows = tl.minimum(offs_n, N - 1)
    out, sum_squares = gemv_tile(
        x_ptr, w_ptr, rows, M, K, stride_xm, stride_xk, stride_wn, stride_wk, first, last,
        EVEN_K, BLOCK_M, BLOCK_K, NORM, PDL,
    )  # fmt: skip
    if NORM:
        out *= rms_scale(sum_squares, K, eps)[:, None]
    if HAS_BIAS:  # added once: by the first split's partial sum
        bias = tl.load(bias_ptr + rows).to(tl.float32)
        out += tl.where(pid_k == 0, bias, 0.0)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if HAS_RESIDUAL:  # the projection's output rounded as stored, then the add, rounded again
        res_ptrs = residual_ptr + offs_m[:, None] * stride_rm + offs_n[None, :]
        res = tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)
        out = out.to(out_ptr.dtype.element_ty).to(tl.float32) + res
    _store_or_reduce(
        out, offs_m, offs_n, mask, pid_n, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, stride_on, SPLIT_K,
    )  # fmt: skip


def gemv_config(m: int, n: int, k: int, programs_per_sm: int = 4) -> dict[str, int]:
    """Tiles for M rows. One row reads [4, 1024] bf16 (8 KiB) a tile with 4 warps, the fastest
    tile of the H200 sweep on every 7-8B projection it beat cuBLAS on (benchmark/NOTES.md);
    more rows read [8, 512 / M] (the accumulators a thread multiply with the rows). K is split
    only until there are `programs_per_sm` programs a SM, each with two K tiles or more: on
    those shapes the column tiles alone fill the GPU and a split only added the reduction."""
    block_m = triton.next_power_of_2(m)
    block_n, block_k = (4, 1024) if m == 1 else (8, max(128, 512 // block_m))
    tiles = triton.cdiv(n, block_n)
    split_k = max(1, min(triton.cdiv(programs_per_sm * NUM_SMS, tiles), k // block_k // 2))
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=4)


def gemv_candidates(n: int, k: int) -> list[dict[str, int]]:
    """The one-row tiles the engine times against cuBLAS at load: the default, and the tiles
    that won the H200 sweep on the shapes where the default did not (narrow K tiles on the
    q/k/v projections, 2 warps on Qwen2.5's gate/up, 8-row tiles where occupancy differs)."""
    default = gemv_config(1, n, k)
    split = default["SPLIT_K"]
    configs = [
        default,
        dict(BLOCK_N=8, BLOCK_K=256, SPLIT_K=split, num_warps=4),
        dict(BLOCK_N=4, BLOCK_K=512, SPLIT_K=split, num_warps=2),
        dict(BLOCK_N=8, BLOCK_K=512, SPLIT_K=split, num_warps=4),
    ]
    return list({tuple(sorted(c.items())): c for c in configs}.values())


def rms_args(rms_eps: float | None) -> dict:
    """The kernels' arguments for `rms_eps`: x / rms(x) in place of x where it is not None."""
    return dict(eps=0.0 if rms_eps is None else rms_eps, NORM=rms_eps is not None)


def dense_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    rms_eps: float | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T (+ bias [N]) -> [..., N] in x's dtype, for at most
    `MAX_ROWS` rows; `config` forces the tiles (benchmarks). `rms_eps`: the product of
    x / sqrt(mean(x^2) + rms_eps), an RMSNorm whose weight is folded into W (its 1 / rms comes
    from the squares of the x tiles the K loop reads anyway: no byte more, and no launch for the
    norm). `residual` [..., N]: returns the product + residual (the residual stream's next
    value). Either runs without a K split only."""
    k = x.shape[-1]
    n = weight.shape[0]
    assert weight.shape == (n, k), f"weight {tuple(weight.shape)} is not [N, K={k}]"
    assert weight.stride(1) == 1, "weight must be contiguous along K (nn.Linear's layout)"
    assert bias is None or bias.shape == (n,), f"bias {tuple(bias.shape)} is not [N={n}]"
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    assert 0 < m <= MAX_ROWS, f"{m} rows: the GEMV takes 1..{MAX_ROWS}; use F.linear"
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if n == 0:
        return out.view(*x.shape[:-1], n)
    cfg = dict(config or gemv_config(m, n, k))
    split = cfg["SPLIT_K"]
    assert triton.cdiv(n, cfg["BLOCK_N"]) <= MAX_COLUMN_TILES, f"N={n}: too many column tiles"
    assert split == 1 or (rms_eps is None and residual is None), "norm/residual: no K split"
    r2 = out
    if residual is not None:
        assert residual.shape == (*x.shape[:-1], n), f"residual {tuple(residual.shape)} mismatch"
        r2 = residual.reshape(m, n)
        assert r2.stride(1) == 1, "residual must be contiguous along N"
    partial = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split)
    pdl = pdl_enabled(x.device)
    _dense_gemv_kernel[grid](
        x2, weight, bias if bias is not None else weight, partial, out,
        _split_counters(x.device), r2, M=m, N=n, K=k, **rms_args(rms_eps),
        stride_xm=x2.stride(0), stride_xk=x2.stride(1), stride_wn=weight.stride(0),
        stride_wk=weight.stride(1), stride_om=out.stride(0), stride_on=out.stride(1),
        stride_rm=r2.stride(0), HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0,
        BLOCK_M=triton.next_power_of_2(m), HAS_RESIDUAL=residual is not None, PDL=pdl, **cfg,
        **pdl_launch_options(pdl),
    )  # fmt: skip
    return out.view(*x.shape[:-1], n)


def dense_gemv_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    rms_eps: float | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same in float32, cast to x's dtype (and with `residual`, added and cast again)."""
    x32 = x.float()
    if rms_eps is not None:
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + rms_eps)
    y = x32 @ weight.float().t()
    y = (y if bias is None else y + bias.float()).to(x.dtype)
    return y if residual is None else (y.float() + residual.float()).to(x.dtype)
