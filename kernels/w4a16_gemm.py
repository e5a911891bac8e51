"""W4A16 GEMM: y = x W with W held as 4-bit codes, per-group scales and zero points, the unpack
and dequantisation fused into the matmul (AWQ / GPTQ inference).

The layout this kernel reads (`pack_int4_rows`; the AWQ and GPTQ checkpoint layouts are
converted to it once, at load): `qweight` int32 [K / 8, N], element (i, n) holding the codes of
rows 8i .. 8i + 7 of column n, row 8i + s in bits 4s .. 4s + 3; `scales` and `zeros` [K / G, N]
in x's dtype, G the group size; W[k, n] = (code[k, n] - zeros[k // G, n]) * scales[k // G, n].
Packing along K lets a program load a [BLOCK_K / 8, BLOCK_N] tile of codes coalesced along N
and expand it to [BLOCK_K, BLOCK_N] with 8 shifts; BLOCK_K divides G, so a tile has one row of
scales and zeros.

Decode-sized rows are bandwidth-bound on the 0.5 byte a weight. Up to 4 rows, a GEMV kernel
(grid `(cdiv(N, BLOCK_N), SPLIT_K, M)`) multiplies on CUDA cores; up to 64, the tensor-core
kernel (grid `(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), SPLIT_K)`) with 16- or 64-row tiles. Both
split K across programs, whose fp32 partial sums are added after, to fill the GPU when there
are few tiles. Prefill-sized rows use larger tiles and no split. Bytes ~= K N / 2 + 2 (K / G) N e + M K e + M N e; FLOPs = 2 M K N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PACK = 8  # 4-bit codes in an int32


@triton.jit
def _w4a16_gemm_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    out_ptr,
    M,
    N,
    K,
    group_size,
    stride_xm,
    stride_xk,
    stride_qk,
    stride_qn,
    stride_sg,
    stride_sn,
    stride_os,
    stride_om,
    stride_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 8)
    shifts = tl.arange(0, 8) * 4
    num_tiles = K // BLOCK_K
    tiles_per_split = tl.cdiv(num_tiles, SPLIT_K)
    first = pid_k * tiles_per_split
    last = tl.minimum(first + tiles_per_split, num_tiles)
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
        codes = tl.reshape(codes, (BLOCK_K, BLOCK_N))
        group = k0 // group_size
        s = tl.load(scales_ptr + group * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        z = tl.load(zeros_ptr + group * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        w = (codes.to(tl.float32) - z.to(tl.float32)[None, :]) * s.to(tl.float32)[None, :]
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    out_ptrs = (
        out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    out_ptr,
    N,
    K,
    group_size,
    stride_xm,
    stride_xk,
    stride_qk,
    stride_qn,
    stride_sg,
    stride_sn,
    stride_os,
    stride_om,
    stride_on,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """One row of x a program, no tensor cores: each of the 8 nibbles of a code tile meets its
    8-strided slice of x, and the group's zero point comes off once per tile through the sum
    of x (sum x (q - z) s = s (sum x q - z sum x))."""
    pid_n, pid_k, row = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_kp = tl.arange(0, BLOCK_K // 8)
    num_tiles = K // BLOCK_K
    tiles_per_split = tl.cdiv(num_tiles, SPLIT_K)
    first = pid_k * tiles_per_split
    last = tl.minimum(first + tiles_per_split, num_tiles)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for tile in range(first, last):
        k0 = tile * BLOCK_K
        q = tl.load(
            qweight_ptr + (k0 // 8 + offs_kp)[:, None] * stride_qk + offs_n[None, :] * stride_qn,
            mask=n_mask[None, :],
            other=0,
        )
        products = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
        x_parts = tl.zeros((BLOCK_K // 8,), dtype=tl.float32)
        for nibble in tl.static_range(8):
            xs = tl.load(x_ptr + row * stride_xm + (k0 + offs_kp * 8 + nibble) * stride_xk)
            xs = xs.to(tl.float32)
            products += xs[:, None] * ((q >> (4 * nibble)) & 0xF).to(tl.float32)
            x_parts += xs
        dot, x_sum = tl.sum(products, axis=0), tl.sum(x_parts, axis=0)  # one reduction a tile
        group = k0 // group_size
        s = tl.load(scales_ptr + group * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        z = tl.load(zeros_ptr + group * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        acc += s.to(tl.float32) * (dot - z.to(tl.float32) * x_sum)
    out_ptrs = out_ptr + pid_k * stride_os + row * stride_om + offs_n * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _sum_splits_kernel(partial_ptr, out_ptr, numel, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum of the SPLIT_K fp32 partial results, cast to out's dtype: one pass."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        acc += tl.load(partial_ptr + split * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


GEMV_ROWS = 4  # up to this many rows, one program a row without tensor cores
NUM_SMS = 132  # an H200's; the split-K sizing aims at a few programs per SM


def _split_k(column_tiles: int, k_tiles: int) -> int:
    return max(1, min(triton.cdiv(4 * NUM_SMS, column_tiles), k_tiles // 2))


def _config(m: int, n: int, k: int, group_size: int) -> dict[str, int]:
    """Tile sizes by the rows' regime (see the module docstring). Decode batches (up to 64
    rows) split K until the GPU has a few programs a SM; larger ones fill it with tiles."""
    block_k = min(group_size, 128)
    k_tiles = k // block_k
    if m <= GEMV_ROWS:
        block_n = 128
        split_k = _split_k(triton.cdiv(n, block_n), k_tiles)
        return dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=4)
    if m <= 64:
        block_m = 16 if m <= 16 else 64
        block_n, num_warps = 64, 4
        split_k = _split_k(triton.cdiv(m, block_m) * triton.cdiv(n, block_n), k_tiles)
    elif m <= 256:
        block_m, block_n, split_k, num_warps = 64, 128, 1, 4
        block_k = min(group_size, 64)
    else:
        block_m, block_n, split_k, num_warps = 128, 128, 1, 8
        block_k = min(group_size, 64)
    return dict(
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=num_warps
    )


def w4a16_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """x [..., K] @ W [K, N] -> [..., N] in x's dtype, W as the module docstring lays it out.
    Split-K partial sums go to an fp32 buffer that one more kernel adds up and casts
    (deterministic, unlike atomics)."""
    k = x.shape[-1]
    n = qweight.shape[1]
    assert qweight.dtype == torch.int32 and qweight.shape[0] * PACK == k, (
        f"qweight {tuple(qweight.shape)} {qweight.dtype} does not pack K={k} rows"
    )
    assert group_size in (32, 64, 128) and k % group_size == 0, (
        f"group size {group_size} must be 32, 64 or 128 and divide K={k}"
    )
    assert scales.shape == zeros.shape == (k // group_size, n), "scales/zeros: [K / G, N]"
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    cfg = _config(m, n, k, group_size)
    split = cfg["SPLIT_K"]
    y = torch.empty(split, m, n, dtype=torch.float32 if split > 1 else x.dtype, device=x.device)
    if m and n:
        args = (x2, qweight, scales, zeros, y)
        strides = (*x2.stride(), *qweight.stride(), *scales.stride(), *y.stride())
        if m <= GEMV_ROWS:
            grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, m)
            _w4a16_gemv_kernel[grid](*args, n, k, group_size, *strides, **cfg)
        else:
            grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
            precision = "ieee" if x.dtype == torch.float32 else "tf32"
            _w4a16_gemm_kernel[grid](
                *args, m, n, k, group_size, *strides, **cfg, DOT_PRECISION=precision
            )
    if split == 1:
        return y[0].view(*x.shape[:-1], n)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(m * n, block),)](y, out, m * n, SPLIT_K=split, BLOCK=block)
    return out.view(*x.shape[:-1], n)


def pack_int4_rows(codes: torch.Tensor) -> torch.Tensor:
    """Codes [K, N] in 0..15 -> int32 [K / 8, N], row 8i + s in bits 4s of row i."""
    k, n = codes.shape
    rows = codes.to(torch.int32).view(k // PACK, PACK, n)
    packed = torch.zeros(k // PACK, n, dtype=torch.int32, device=codes.device)
    for s in range(PACK):
        packed |= rows[:, s] << (4 * s)
    return packed


def unpack_int4_rows(qweight: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4_rows`: int32 [K / 8, N] -> codes [K, N] (int32, 0..15)."""
    shifts = torch.arange(0, 4 * PACK, 4, dtype=torch.int32, device=qweight.device)
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF
    return codes.flatten(0, 1)


def dequantize_int4_rows(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """W [K, N] in float32 from the kernel's layout."""
    codes = unpack_int4_rows(qweight).float()
    s = scales.float().repeat_interleave(group_size, 0)
    z = zeros.float().repeat_interleave(group_size, 0)
    return (codes - z) * s


def w4a16_gemm_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    w = dequantize_int4_rows(qweight, scales, zeros, group_size)
    return (x.float() @ w).to(x.dtype)
