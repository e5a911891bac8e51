"""W4A16 GEMM on tensor cores from registers: 4-bit codes unpacked straight into the operand of
the matrix multiply, two weights an instruction, for 1 to 64 rows of x (decode batches).

The layout (`pack_int4_mma`; AWQ and GPTQ checkpoints are converted to it once, at load):
`qweight` int32 [N, K / 8], read by the kernel as int16 [N, K / 4]. K is cut in tiles of four
groups (4 G rows of W, G the group size); int16 j of a tile, in row n, holds the codes of
W[t 4G + s G + j, n] for s = 0..3 in its bits 4s .. 4s + 3. So the tile's int16 [BLOCK_N, G] is
four planes at once, plane s being group 4t + s of W^T's rows `n`: one shift and one LOP3 turn
a 32-bit word (two int16, two adjacent k) into the bf16 pair (M + c0, M + c1), M = 128 in bf16
(1024 in fp16) whose last mantissa bits the code fills, and one packed subtraction of the
column's M + z leaves the exact integers c - z: 1.5 instructions a weight, against ~3.2 of the
CUDA-core GEMV (`w4a16_gemm.py`), whose FFMA a weight and its unpacking bounded it.

The product is W^T x^T: the weights are the dot's left operand (BLOCK_N rows, 64 or 128, a
warp group's wgmma takes them from registers), x^T its right one (BLOCK_M columns, 16 to 64,
through shared memory). Each group's dot starts from zero and is scaled into the fp32
accumulator: acc += s (W^T_g - z) x_g. `scales` and `zeros` are [K / G, N] in x's dtype,
`zeros` biased by M (`zeros + M`) at load so the kernel subtracts them as they are.

Decode batches split K over programs to fill the GPU, the last program of each output tile
adding the partial sums (`w4a16_gemm._store_or_reduce`). Beyond 64 rows, W is dequantized
(`w4a16_mma_dequantize`) and a dense GEMM multiplies.
Bytes ~= K N / 2 + 2 (K / G) N e + M K e + M N e; FLOPs = 2 M K N (the dot pads M to 16).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release
from .w4a16_gemm import NUM_SMS, _split_counters, _store_or_reduce

PACK = 8  # 4-bit codes in an int32
PLANES = 4  # groups a tile's int16 carries, one a nibble
_PLANES = tl.constexpr(PLANES)
MMA_ROWS = 64  # up to this many rows of x, the fused kernel; beyond, dequantize + dense GEMM
# The float whose low mantissa bits a code fills: its bit pattern, and the value.
MAGIC = {torch.bfloat16: (0x4300, 128.0), torch.float16: (0x6400, 1024.0)}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _plane(q, zz, s: tl.constexpr, IS_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """Plane `s` of an int16 code tile as W - z in x's dtype: (M + c) - (M + z), exact.
    `zz` is M + z broadcast over the tile."""
    if INTERPRET:  # the interpreter runs no inline PTX: the same value from integer ops
        c = ((q.to(tl.int32) >> (4 * s)) & 0xF).to(tl.float32)
        return (c - (zz.to(tl.float32) - 128.0 if IS_BF16 else zz.to(tl.float32) - 1024.0)).to(
            zz.dtype
        )
    elif IS_BF16:
        return tl.inline_asm_elementwise(
            "{\n.reg .b32 t;\n"
            f"shr.u32 t, $1, {4 * s};\n"
            "lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;\n"
            "sub.rn.bf16x2 $0, t, $2;\n}",
            "=r,r,r",
            [q, zz],
            dtype=tl.bfloat16,
            is_pure=True,
            pack=2,
        )
    else:
        return tl.inline_asm_elementwise(
            "{\n.reg .b32 t;\n"
            f"shr.u32 t, $1, {4 * s};\n"
            "lop3.b32 t, t, 0x000F000F, 0x64006400, 0xEA;\n"
            "sub.rn.f16x2 $0, t, $2;\n}",
            "=r,r,r",
            [q, zz],
            dtype=tl.float16,
            is_pure=True,
            pack=2,
        )


@triton.jit
def _plane_scaled(q, zz, ss, s: tl.constexpr, IS_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """Plane `s` as the weight (c - z) s in x's dtype: the exact c - z, times the scale `ss`
    (broadcast over the tile) rounded once, so the dot can accumulate across groups."""
    if INTERPRET:
        c = ((q.to(tl.int32) >> (4 * s)) & 0xF).to(tl.float32)
        magic = 128.0 if IS_BF16 else 1024.0
        return ((c - (zz.to(tl.float32) - magic)) * ss.to(tl.float32)).to(zz.dtype)
    elif IS_BF16:
        return tl.inline_asm_elementwise(
            "{\n.reg .b32 t;\n"
            f"shr.u32 t, $1, {4 * s};\n"
            "lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;\n"
            "sub.rn.bf16x2 t, t, $2;\n"
            "mul.rn.bf16x2 $0, t, $3;\n}",
            "=r,r,r,r",
            [q, zz, ss],
            dtype=tl.bfloat16,
            is_pure=True,
            pack=2,
        )
    else:
        return tl.inline_asm_elementwise(
            "{\n.reg .b32 t;\n"
            f"shr.u32 t, $1, {4 * s};\n"
            "lop3.b32 t, t, 0x000F000F, 0x64006400, 0xEA;\n"
            "sub.rn.f16x2 t, t, $2;\n"
            "mul.rn.f16x2 $0, t, $3;\n}",
            "=r,r,r,r",
            [q, zz, ss],
            dtype=tl.float16,
            is_pure=True,
            pack=2,
        )


@triton.jit
def _tile_product(acc, q, tile, x_ptrs, scales_ptr, zeros_ptr, offs_n, offs_j, n_mask, m_mask, K,
                  stride_sg, BLOCK_N: tl.constexpr, GROUP_SIZE: tl.constexpr,
                  IS_BF16: tl.constexpr, INTERPRET: tl.constexpr,
                  FOLD_SCALE: tl.constexpr):  # fmt: skip
    """acc + the four groups of code tile `tile` (q [BLOCK_N, G] int16) times x's rows."""
    for s in tl.static_range(_PLANES):
        group = tile * _PLANES + s
        k0 = group * GROUP_SIZE
        # Groups past K (a last, partial tile) meet x = 0 and scale 0: they add nothing.
        x = tl.load(x_ptrs + k0, mask=m_mask[None, :] & (offs_j[:, None] < K - k0), other=0.0)
        sz = group * stride_sg + offs_n
        g_mask = n_mask & (tl.full((BLOCK_N,), k0, tl.int32) < K)
        scale = tl.load(scales_ptr + sz, mask=g_mask, other=0.0)
        zz = tl.broadcast_to(tl.load(zeros_ptr + sz, mask=g_mask, other=0.0)[:, None], q.shape)
        if FOLD_SCALE:
            ss = tl.broadcast_to(scale[:, None], q.shape)
            acc = tl.dot(_plane_scaled(q, zz, ss, s, IS_BF16, INTERPRET), x, acc)
        else:
            w = _plane(q, zz, s, IS_BF16, INTERPRET)
            acc += scale.to(tl.float32)[:, None] * tl.dot(w, x)
    return acc


@triton.jit(do_not_specialize=["M"])
def _w4a16_mma_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    partial_ptr,
    out_ptr,
    counter_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_qn,
    stride_sg,
    stride_om,
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IS_BF16: tl.constexpr,
    INTERPRET: tl.constexpr,
    PDL: tl.constexpr,
    FOLD_SCALE: tl.constexpr,
):
    """acc^T [BLOCK_N, BLOCK_M] += s (W^T_g - z) x_g^T over the groups g of this split's tiles."""
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask, m_mask = offs_n < N, offs_m < M
    offs_j = tl.arange(0, GROUP_SIZE)
    TILE_K: tl.constexpr = _PLANES * GROUP_SIZE
    num_tiles = tl.cdiv(K, TILE_K)
    per_split = tl.cdiv(num_tiles, SPLIT_K)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, num_tiles)
    # The first tile's codes go out before the PDL wait (weights: nothing in the step writes
    # them). The rest are loaded in the loop, not ahead of it by hand: a load carried into the
    # next iteration reaches the dot through a shared-memory round trip of the dequantized
    # weights (4x the bytes), where a load in the body is hoisted into the dot's register
    # layout and pipelined by the compiler (cp.async, `num_stages`).
    q_ptrs = qweight_ptr + offs_n[:, None] * stride_qn + (first * GROUP_SIZE + offs_j)[None, :]
    has_first = tl.full((1, GROUP_SIZE), first, tl.int32) < last
    q_first = tl.load(q_ptrs, mask=n_mask[:, None] & has_first, other=0)
    pdl_wait_then_release(PDL)
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_j[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # An empty split's `first` is past K: its groups are masked to nothing.
    acc = _tile_product(
        acc, q_first, first, x_ptrs, scales_ptr, zeros_ptr, offs_n, offs_j, n_mask, m_mask, K,
        stride_sg, BLOCK_N, GROUP_SIZE, IS_BF16, INTERPRET, FOLD_SCALE,
    )  # fmt: skip
    for tile in range(first + 1, last):
        q_ptrs += GROUP_SIZE
        q = tl.load(q_ptrs, mask=n_mask[:, None], other=0)
        acc = _tile_product(
            acc, q, tile, x_ptrs, scales_ptr, zeros_ptr, offs_n, offs_j, n_mask, m_mask, K,
            stride_sg, BLOCK_N, GROUP_SIZE, IS_BF16, INTERPRET, FOLD_SCALE,
        )  # fmt: skip
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)[:, None]
    mask = m_mask[:, None] & n_mask[None, :]
    tile_id = pid_m * tl.num_programs(0) + pid_n
    _store_or_reduce(
        tl.trans(acc), offs_m, offs_n, mask, tile_id, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, 1, SPLIT_K,
    )  # fmt: skip


@triton.jit
def _w4a16_mma_dequantize_kernel(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    w_ptr,
    N,
    K,
    stride_qn,
    stride_sg,
    stride_wk,
    MAGIC_VALUE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """W [K, N] in w's dtype, one group of one tile's rows (a plane) a program."""
    pid_n, group = tl.program_id(0), tl.program_id(1)
    tile, s = group // _PLANES, group % _PLANES
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, GROUP_SIZE)
    n_mask = offs_n < N
    q = tl.load(
        qweight_ptr + offs_n[:, None] * stride_qn + (tile * GROUP_SIZE + offs_j)[None, :],
        mask=n_mask[:, None],
        other=0,
    ).to(tl.int32)
    sz = group * stride_sg + offs_n
    scale = tl.load(scales_ptr + sz, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + sz, mask=n_mask, other=0.0).to(tl.float32) - MAGIC_VALUE
    w = (((q >> (4 * s)) & 0xF).to(tl.float32) - z[:, None]) * scale[:, None]
    w_ptrs = w_ptr + (group * GROUP_SIZE + offs_j)[None, :] * stride_wk + offs_n[:, None]
    tl.store(w_ptrs, w.to(w_ptr.dtype.element_ty), mask=n_mask[:, None])


def pack_int4_mma(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes [K, N] in 0..15 -> int32 [N, K_pad / 8] in the module docstring's layout, K_pad the
    next multiple of 4 G (the padding rows hold code 0; the kernel gives them scale 0)."""
    k, n = codes.shape
    tile = PLANES * group_size
    k_pad = triton.cdiv(k, tile) * tile
    padded = torch.zeros(k_pad, n, dtype=torch.int32, device=codes.device)
    padded[:k] = codes.to(torch.int32)
    # [tiles, plane s, j, n] -> int16 [n, tiles, j] = sum over s of code << 4s.
    planes = padded.view(k_pad // tile, PLANES, group_size, n)
    shifts = (4 * torch.arange(PLANES, dtype=torch.int32, device=codes.device)).view(1, -1, 1, 1)
    halves = (planes << shifts).sum(dim=1)  # [tiles, j, n], 16-bit values
    halves = halves.permute(2, 0, 1).reshape(n, k_pad // 4)
    # Two int16 a word, little-endian: j even in the low half.
    words = halves[:, 0::2].long() | (halves[:, 1::2].long() << 16)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32).contiguous()


def unpack_int4_mma(qweight: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """The inverse of `pack_int4_mma`: codes [K, N] (int32, 0..15)."""
    n = qweight.shape[0]
    halves = torch.stack((qweight & 0xFFFF, (qweight >> 16) & 0xFFFF), dim=-1).reshape(n, -1)
    tiles = halves.shape[1] // group_size
    halves = halves.view(n, tiles, 1, group_size)
    shifts = (4 * torch.arange(PLANES, dtype=torch.int32, device=qweight.device)).view(1, 1, -1, 1)
    codes = (halves >> shifts) & 0xF  # [n, tiles, s, j]
    return codes.reshape(n, -1)[:, :k].t()


def mma_zeros(zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zero points [K / G, N] as the kernel subtracts them: M + z in x's dtype (exact)."""
    return (zeros.float() + MAGIC[dtype][1]).to(dtype)


def w4a16_mma_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, k: int
) -> torch.Tensor:
    """W [K, N] in the scales' dtype from the mma layout (`zeros` biased, `mma_zeros`)."""
    n = qweight.shape[0]
    w = torch.empty(k, n, dtype=scales.dtype, device=qweight.device)
    block_n = 64
    grid = (triton.cdiv(n, block_n), k // group_size)
    _w4a16_mma_dequantize_kernel[grid](
        qweight.view(torch.int16), scales, zeros, w, n, k, qweight.stride(0) * 2, scales.stride(0),
        w.stride(0), MAGIC_VALUE=MAGIC[scales.dtype][1], GROUP_SIZE=group_size, BLOCK_N=block_n,
    )  # fmt: skip
    return w


def _config(m: int, n: int, k: int, group_size: int) -> dict[str, int]:
    """From the H200 sweep (benchmark/gpu_w4a16_mma.py, results/gpu_w4a16_mma_s11*.log): 64-row
    tiles of W^T, a split aiming at ~2 programs a SM, the scale applied to each group's fresh
    product (folding it into the operand was slower everywhere), 2 stages at 64 rows of x
    (3 need more shared memory than an SM has)."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 64
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, PLANES * group_size)
    split_k = max(1, min(triton.cdiv(2 * NUM_SMS, tiles), k_tiles))
    return dict(
        BLOCK_M=block_m, BLOCK_N=block_n, SPLIT_K=split_k, FOLD_SCALE=0, num_warps=4,
        num_stages=2 if block_m == 64 else 3,
    )  # fmt: skip


def w4a16_mma_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """x [..., K] @ W [K, N] (+ bias) in x's dtype (bf16 or fp16), W in the mma layout."""
    k, n = x.shape[-1], qweight.shape[0]
    assert x.dtype in MAGIC, f"x is {x.dtype}: the mma layout runs bf16 and fp16"
    assert scales.shape == zeros.shape == (k // group_size, n), "scales/zeros: [K / G, N]"
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m > MMA_ROWS and config is None:
        out = x2 @ w4a16_mma_dequantize(qweight, scales, zeros, group_size, k)
        return (out if bias is None else out + bias).view(*x.shape[:-1], n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        cfg = {"FOLD_SCALE": 0} | (config or _config(m, n, k, group_size))
        split = cfg["SPLIT_K"]
        partial = (
            torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
        )
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
        pdl = pdl_enabled(x.device)
        _w4a16_mma_kernel[grid](
            x2, qweight.view(torch.int16), scales, zeros, partial, out, _split_counters(x.device),
            bias if bias is not None else scales, m, n, k, x2.stride(0), qweight.stride(0) * 2,
            scales.stride(0), out.stride(0), GROUP_SIZE=group_size, HAS_BIAS=bias is not None,
            IS_BF16=x.dtype == torch.bfloat16, INTERPRET=_interpreting(), PDL=pdl, **cfg,
            **pdl_launch_options(pdl),
        )  # fmt: skip
    return out.view(*x.shape[:-1], n)
