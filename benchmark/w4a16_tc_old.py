"""The W4A16 tensor-core GEMM as it was before the nibble-plane rewrite (main at 356af48), kept
here only so that `gpu_w4a16_tc.py` and `w4a16_tc_sass.py` can time and count it beside the new
one: the [BLOCK_K / 8, BLOCK_N] code tile expanded to [BLOCK_K, BLOCK_N] by a reshape (through
shared memory), dequantized, and re-laid-out for one dot; BLOCK_K = min(group size, 128)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmdeploy_kernels.w4a16_gemm import (
    PACK,
    _codes_as_float,
    _group_scales,
    _split_counters,
    _split_k,
    _store_or_reduce,
)


@triton.jit
def _split_tiles(pid_k, K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The K tiles [first, last) of split `pid_k`."""
    num_tiles = K // BLOCK_K
    tiles_per_split = tl.cdiv(num_tiles, SPLIT_K)
    first = pid_k * tiles_per_split
    return first, tl.minimum(first + tiles_per_split, num_tiles)


@triton.jit
def _w4a16_gemm_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    partial_ptr,
    out_ptr,
    counter_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_qk,
    stride_qn,
    stride_sg,
    stride_sn,
    stride_om,
    stride_on,
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Tensor cores: the [BLOCK_K / 8, BLOCK_N] code tile expands to [BLOCK_K, BLOCK_N] with
    8 shifts, is dequantized in x's dtype and meets a [BLOCK_M, BLOCK_K] tile of x."""
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 8)
    shifts = tl.arange(0, 8) * 4
    first, last = _split_tiles(pid_k, K, BLOCK_K, SPLIT_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(first, last):
        k0 = tile * BLOCK_K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :] * stride_xk,
            mask=m_mask[:, None],
            other=0.0,
        )
        q = tl.load(
            qweight_ptr + (k0 // 8 + offs_kp)[:, None] * stride_qk + offs_n[None, :] * stride_qn,
            mask=n_mask[None, :],
            other=0,
        )
        codes = (q[:, None, :] >> shifts[None, :, None]) & 0xF
        codes = _codes_as_float(tl.reshape(codes, (BLOCK_K, BLOCK_N)))
        s, z = _group_scales(
            scales_ptr, zeros_ptr, k0 // GROUP_SIZE, offs_n, n_mask, stride_sg, stride_sn
        )
        w = (codes - z[None, :]) * s[None, :]
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    mask = m_mask[:, None] & n_mask[None, :]
    tile_id = pid_m * tl.num_programs(1) + pid_n
    _store_or_reduce(
        acc, offs_m, offs_n, mask, tile_id, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, stride_on, SPLIT_K,
    )  # fmt: skip


def old_config(m: int, n: int, k: int, group_size: int) -> dict[str, int]:
    """The old `_config` for 2..64 rows."""
    block_k = min(group_size, 128)
    block_m, block_n = (16 if m <= 16 else 64), 64
    split_k = _split_k(triton.cdiv(m, block_m) * triton.cdiv(n, block_n), k // block_k)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=4)


def w4a16_tc_old(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
    group_size: int,
) -> torch.Tensor:  # fmt: skip
    """x [M, K] (2 <= M <= 64) @ W through the old kernel, its old tiles."""
    m, k = x.shape
    n = qweight.shape[1]
    assert qweight.shape[0] * PACK == k and 2 <= m <= 64
    cfg = old_config(m, n, k, group_size)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    split = cfg["SPLIT_K"]
    partial = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _w4a16_gemm_kernel[grid](
        x, qweight, scales, zeros, partial, out, _split_counters(x.device), m, n, k,
        *x.stride(), *qweight.stride(), *scales.stride(), *out.stride(),
        GROUP_SIZE=group_size, **cfg, DOT_PRECISION=precision,
    )  # fmt: skip
    return out
