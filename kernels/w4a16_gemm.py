"""W4A16 GEMM: y = x W with W held as 4-bit codes, per-group scales and zero points, the unpack
and dequantisation fused into the matmul (AWQ / GPTQ inference).

The layout this kernel reads (`pack_int4_rows`; the AWQ and GPTQ checkpoint layouts are
converted to it once, at load): `qweight` int32 [K / 8, N], element (i, n) holding the codes of
rows 8i .. 8i + 7 of column n, row 8i + s in bits 4s .. 4s + 3; `scales` and `zeros` [K / G, N]
in x's dtype, G the group size; W[k, n] = (code[k, n] - zeros[k // G, n]) * scales[k // G, n].
Packing along K lets a program load a [BLOCK_K / 8, BLOCK_N] tile of codes coalesced along N
and expand it to [BLOCK_K, BLOCK_N] with 8 shifts; BLOCK_K divides G, so a tile has one row of
scales and zeros.

Grid `(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), SPLIT_K)`. Decode-sized rows (M <= 16) are
bandwidth-bound on the 0.5 byte a weight: few column tiles, so K is split across programs
that add their partial sums atomically into an fp32 buffer, filling the GPU. Prefill-sized
rows use larger tiles, no split. Bytes ~= K N / 2 + 2 (K / G) N e + M K e + M N e; FLOPs = 2 M K N.
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
    stride_om,
    stride_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
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
        acc += tl.dot(x, w.to(x.dtype), input_precision="ieee")
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)


def _config(m: int, n: int, k: int, group_size: int) -> dict[str, int]:
    """Tile sizes by the rows' regime (see the module docstring), and enough programs for the
    132 SMs of an H200 when the rows are few."""
    block_k = min(group_size, 128)
    if m <= 16:
        block_m, block_n, num_warps = 16, 64, 4
        column_tiles = triton.cdiv(n, block_n)
        split_k = max(1, min(triton.cdiv(2 * 132, column_tiles), k // block_k // 4))
    elif m <= 64:
        block_m, block_n, split_k, num_warps = 64, 64, 1, 4
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
    """x [..., K] @ W [K, N] -> [..., N] in x's dtype, W as the module docstring lays it out."""
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
    split = cfg["SPLIT_K"] > 1
    out = torch.zeros if split else torch.empty
    y = out(m, n, dtype=torch.float32 if split else x.dtype, device=x.device)
    if m and n:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), cfg["SPLIT_K"])
        _w4a16_gemm_kernel[grid](
            x2,
            qweight,
            scales,
            zeros,
            y,
            m,
            n,
            k,
            group_size,
            *x2.stride(),
            *qweight.stride(),
            *scales.stride(),
            *y.stride(),
            **cfg,
        )
    return y.to(x.dtype).view(*x.shape[:-1], n)


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
