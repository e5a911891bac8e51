"""The W4A16 one-row GEMV as it was before the denormal rewrite (main at 3d5358f), kept here
only so that `gpu_w4a16_gemv.py` and `w4a16_sass.py` can time and count it beside the new one:
the codes shifted per nibble and turned into floats through 2^23, 256-column tiles, 4 warps."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmdeploy_kernels.w4a16_gemm import (
    _group_scales,
    _int4_as_float,
    _split_counters,
    _split_k,
    _split_tiles,
    _store_or_reduce,
)


@triton.jit
def _w4a16_gemv_kernel(
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
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """CUDA cores, one row of x a program: each nibble of a code tile meets its 8-strided slice
    of x, and the group's zero point comes off once a tile through the sum of x
    (sum x (q - z) s = s (sum x q - z sum x)). The next tile's codes are loaded before this
    tile's arithmetic, so the memory latency hides behind it."""
    pid_n, pid_k, row = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_kp = tl.arange(0, BLOCK_K // 8)
    first, last = _split_tiles(pid_k, K, BLOCK_K, SPLIT_K)
    q_ptrs = qweight_ptr + (first * BLOCK_K // 8 + offs_kp)[:, None] * stride_qk
    q_ptrs += offs_n[None, :] * stride_qn
    q_step = BLOCK_K // 8 * stride_qk
    has_rows = tl.full((BLOCK_K // 8, 1), first, tl.int32) < last
    q_next = tl.load(q_ptrs, mask=n_mask[None, :] & has_rows, other=0)
    acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    for tile in range(first, last):
        q = q_next
        q_ptrs += q_step
        has_rows = tl.full((BLOCK_K // 8, 1), tile + 1, tl.int32) < last
        q_next = tl.load(q_ptrs, mask=n_mask[None, :] & has_rows, other=0)
        k0 = tile * BLOCK_K
        products = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
        x_parts = tl.zeros((BLOCK_K // 8,), dtype=tl.float32)
        for nibble in tl.static_range(8):
            xs = tl.load(x_ptr + row * stride_xm + (k0 + offs_kp * 8 + nibble) * stride_xk)
            xs = xs.to(tl.float32)
            products += xs[:, None] * _int4_as_float(q, 4 * nibble)
            x_parts += xs
        dot, x_sum = tl.sum(products, axis=0), tl.sum(x_parts, axis=0)  # one reduction a tile
        s, z = _group_scales(
            scales_ptr, zeros_ptr, k0 // GROUP_SIZE, offs_n, n_mask, stride_sg, stride_sn
        )
        acc += (s * (dot - z * x_sum))[None, :]
    offs_m = row + tl.arange(0, 1)
    mask = n_mask[None, :]
    tile_id = row * tl.num_programs(0) + pid_n
    _store_or_reduce(
        acc, offs_m, offs_n, mask, tile_id, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, stride_on, SPLIT_K,
    )  # fmt: skip


def w4a16_gemv_old(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """x [1, K] @ W with the old kernel and its default tiles."""
    m, k = x.shape
    n = qweight.shape[1]
    block_n, block_k = 256, min(group_size, 128)
    split = _split_k(m * triton.cdiv(n, block_n), k // block_k, programs_per_sm=8)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    partial = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    _w4a16_gemv_kernel[(triton.cdiv(n, block_n), split, m)](
        x, qweight, scales, zeros, partial, out, _split_counters(x.device), m, n, k,
        *x.stride(), *qweight.stride(), *scales.stride(), *out.stride(),
        GROUP_SIZE=group_size, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=4,
    )  # fmt: skip
    return out
