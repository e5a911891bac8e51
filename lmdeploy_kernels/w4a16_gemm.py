"""W4A16 GEMM: y = x W with W held as 4-bit codes, per-group scales and zero points, the unpack
and dequantisation fused into the matmul (AWQ / GPTQ inference).

The layout this kernel reads (`pack_int4_rows`; the AWQ and GPTQ checkpoint layouts are
converted to it once, at load): `qweight` int32 [K / 8, N], element (i, n) holding the codes of
rows 8i .. 8i + 7 of column n, row 8i + s in bits 4s .. 4s + 3; `scales` and `zeros` [K / G, N]
in x's dtype, G the group size; W[k, n] = (code[k, n] - zeros[k // G, n]) * scales[k // G, n].
A program loads a [BLOCK_K / 8, BLOCK_N] tile of codes coalesced along N. In the GEMV and the
dequantize kernel BLOCK_K divides G, so a tile has one row of scales and zeros; the
tensor-core kernel's 128-row tiles may span groups (G = 32, 64) and K need not divide them.

A code becomes a float without an int-to-float conversion (a quarter-rate instruction, which
bounded the first version of these kernels): in the tensor-core and dequantize kernels its bits
OR-ed into the mantissa of 2^23 give the float 2^23 + code exactly, and one subtraction leaves
the code; the GEMV, which spends every instruction on one weight, reads it as a denormal
(`DOT_SHIFT` below) with no subtraction at all.

Decode-sized rows are bandwidth-bound on the half byte a weight. Up to `GEMV_ROWS` rows, a
GEMV kernel (one row a program) multiplies on CUDA cores, its next tile of codes in flight
while it computes on this one; up to `FUSED_ROWS`, tensor cores with 16- or 64-row tiles.
Decode batches split K over programs to fill the GPU, and the last program of each output tile
to finish adds the fp32 partial sums (a counter per tile, reset by that program): one launch a
GEMM. Beyond `FUSED_ROWS`, W is dequantized and a dense GEMM multiplies.
Bytes ~= K N / 2 + 2 (K / G) N e + M K e + M N e; FLOPs = 2 M K N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release

PACK = 8  # 4-bit codes in an int32
# Measured on an H200 (benchmark/results/w4a16_tune_h200.json, 8B linears, CUDA graphs): the
# GEMV wins at one row only (a program a row re-reads the codes), the tensor-core kernel up to
# 64 rows, and from 128 rows dequantize + cuBLAS beats both.
GEMV_ROWS = 1  # up to this many rows, CUDA cores; above, tensor cores
FUSED_ROWS = 64  # above this many rows, dequantize W and multiply with a dense GEMM
NUM_SMS = 132  # an H200's; the split-K sizing aims at a few programs per SM
MAX_COLUMN_TILES = 1 << 16  # counters kept per device for the split-K reductions


@triton.jit
def _codes_as_float(codes):
    """4-bit codes (int32, 0..15) as float32, exactly: 2^23 + code, minus 2^23."""
    return (codes | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _int4_as_float(q, shift: tl.constexpr):
    """Nibble `shift / 4` of each int32 as float32."""
    return _codes_as_float((q >> shift) & 0xF)


# The GEMV reads a nibble as a float with one AND and no conversion: masked in place, code c at
# bits 4p .. 4p + 3 of an int32 (p = 0..3) is the bit pattern of the denormal c 2^(4p - 149),
# exact, and x scaled by 2^(149 - 4p - DOT_SHIFT) makes each product x c 2^-DOT_SHIFT, a
# normal float: one FFMA a weight. DOT_SHIFT = 64 keeps x 2^85 finite for |x| < 2^43 and the
# products normal for |x| >= 2^-62 (below that a product is off by at most 2^-85 absolute).
# FFMA takes denormal operands in hardware; it would flush them only with .ftz, which Triton
# does not emit here (benchmark/w4a16_sass.py checks the PTX).
DOT_SHIFT = tl.constexpr(64)


@triton.jit
def _nibble_as_denormal(half, p: tl.constexpr):
    """Nibble `p` (0..3) of each int32's low 16 bits, c, as the float c 2^(4p - 149)."""
    return (half & (0xF << (4 * p))).to(tl.float32, bitcast=True)


@triton.jit
def _denormal_x_scale(p: tl.constexpr):
    """What x is multiplied by to meet nibble `p`: 2^(149 - 4p - DOT_SHIFT)."""
    return 2.0 ** (149 - DOT_SHIFT - 4 * p)


@triton.jit
def _split_tiles(pid_k, K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The K tiles [first, last) of split `pid_k`."""
    num_tiles = tl.cdiv(K, BLOCK_K)  # the tensor-core kernel's last tile may be partial
    tiles_per_split = tl.cdiv(num_tiles, SPLIT_K)
    first = pid_k * tiles_per_split
    return first, tl.minimum(first + tiles_per_split, num_tiles)


@triton.jit
def _group_scales(scales_ptr, zeros_ptr, group, offs_n, n_mask, stride_sg, stride_sn):
    """One group's scales and zero points over the columns `offs_n`, as float32."""
    offs = group * stride_sg + offs_n * stride_sn
    s = tl.load(scales_ptr + offs, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + offs, mask=n_mask, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def _store_or_reduce(
    acc,
    offs_m,
    offs_n,
    mask,
    pid_n,
    pid_k,
    partial_ptr,
    out_ptr,
    counter_ptr,
    M,
    N,
    stride_om,
    stride_on,
    SPLIT_K: tl.constexpr,
):
    """Without a split, store; with one, store this program's partial sum, and the program
    that finishes its column tile last adds all of them into `out` and resets the counter."""
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tile = offs_m[:, None] * N + offs_n[None, :]
        tl.store(partial_ptr + pid_k * M * N + tile, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        done = tl.atomic_add(counter_ptr + pid_n, 1, sem="acq_rel")
        if done == SPLIT_K - 1:
            total = tl.zeros_like(acc)
            for split in tl.static_range(SPLIT_K):  # unrolled: the loads go out together
                total += tl.load(
                    partial_ptr + split * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg"
                )
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(counter_ptr + pid_n, 0)


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
    bias_ptr,
    GROUP_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
):
    """CUDA cores, one row of x a program, at heart an AND and an FFMA a weight (see
    `DOT_SHIFT`): a thread holds every row of its columns' code tile, so the sum over K stays in its
    registers, and a column's zero point comes off once a tile through the sum of x
    (sum x (q - z) s = s (sum x q - z sum x)). The next tile's codes are loaded before this
    tile's arithmetic, so the memory latency hides behind it. With PDL (lmdeploy_kernels/pdl.py) the
    first tile of codes is in flight while the predecessor finishes; everything else (x, the
    scales, the partials, the split counters) is touched only after the wait. A bias is added
    in here, by the first split's partial sum: a torch add after the launch would break the
    PDL chain on both its sides."""
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
    pdl_wait_then_release(PDL)
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for tile in range(first, last):
        q = q_next
        q_ptrs += q_step
        has_rows = tl.full((BLOCK_K // 8, 1), tile + 1, tl.int32) < last
        q_next = tl.load(q_ptrs, mask=n_mask[None, :] & has_rows, other=0)
        k0 = tile * BLOCK_K
        products = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
        x_parts = tl.zeros((BLOCK_K // 8,), dtype=tl.float32)
        for nibble in tl.static_range(8):
            xs = tl.load(x_row + (k0 + offs_kp * 8 + nibble) * stride_xk).to(tl.float32)
            x_parts += xs
            # Nibbles 4-7 shifted to the low 16 bits (the mask drops the sign extension).
            codes = _nibble_as_denormal(q >> (16 * (nibble // 4)), nibble % 4)
            products += (xs * _denormal_x_scale(nibble % 4))[:, None] * codes
        # One reduction a tile, in the thread's registers; the products are x q 2^-DOT_SHIFT.
        dot, x_sum = tl.sum(products, axis=0) * 2.0**DOT_SHIFT, tl.sum(x_parts, axis=0)
        s, z = _group_scales(
            scales_ptr, zeros_ptr, k0 // GROUP_SIZE, offs_n, n_mask, stride_sg, stride_sn
        )
        acc += s * (dot - z * x_sum)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)
    offs_m = row + tl.arange(0, 1)
    mask = n_mask[None, :]
    tile_id = row * tl.num_programs(0) + pid_n
    _store_or_reduce(
        acc[None, :], offs_m, offs_n, mask, tile_id, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, stride_on, SPLIT_K,
    )  # fmt: skip


@triton.jit
def _x_planes(x, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """x's [BLOCK_M, BLOCK_K] tile as 8 [BLOCK_M, BLOCK_K / 8] planes, plane p holding columns
    8i + p (the rows nibble p of the code tile holds): three splits in registers."""
    a0, a1 = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 8, 2, 2, 2)))  # bit 0 of p
    b00, b01 = tl.split(a0)
    b10, b11 = tl.split(a1)
    p0, p4 = tl.split(b00)
    p2, p6 = tl.split(b01)
    p1, p5 = tl.split(b10)
    p3, p7 = tl.split(b11)
    return p0, p1, p2, p3, p4, p5, p6, p7


@triton.jit
def _tile_scales(scales_ptr, zeros_ptr, k0, K, offs_kp, offs_n, n_mask, stride_sg, stride_sn,
                 GROUP_SIZE: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The scales and zero points of a code tile's rows as float32: one row broadcast over the
    tile when a group spans it, else a row per code row (rows 8i .. 8i + 7 share a group)."""
    if GROUP_SIZE >= BLOCK_K:
        rows = tl.full((1,), 0, tl.int32) + k0
    else:
        rows = k0 + offs_kp * 8
    offs = (rows // GROUP_SIZE)[:, None] * stride_sg + offs_n[None, :] * stride_sn
    mask = (rows < K)[:, None] & n_mask[None, :]
    s = tl.load(scales_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return s, z


# M changes from step to step: specialising on it (== 1, divisible by 16) would
# compile a new variant in the middle of serving, ~1 s of stall the first time each shows up.
@triton.jit(do_not_specialize=["M"])
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
    """Tensor cores, one dot a nibble plane: nibble p of the [BLOCK_K / 8, BLOCK_N] code tile
    holds W's rows 8i + p, which meet x's columns 8i + p (a plane of x's tile, split out in
    registers). Each plane is dequantized element by element in the layout the dot reads, so
    the codes are never rearranged: expanding the tile to [BLOCK_K, BLOCK_N] first cost a trip
    through shared memory and ~9 instructions a weight (benchmark/NOTES.md, w4a16_tc_sass.py).
    A plane's nibble is masked in place under the exponent of 2^23 (OR-ed once per half of
    the int32), so one AND makes the float 2^23 + c 16^p exactly."""
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_K // 8)
    first, last = _split_tiles(pid_k, K, BLOCK_K, SPLIT_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(first, last):
        k0 = tile * BLOCK_K
        # Rows past K (a last, partial tile) read codes 0 against x 0: they add nothing.
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :] * stride_xk,
            mask=m_mask[:, None] & (k0 + offs_k < K)[None, :],
            other=0.0,
        )
        q = tl.load(
            qweight_ptr + (k0 // 8 + offs_kp)[:, None] * stride_qk + offs_n[None, :] * stride_qn,
            mask=(k0 + offs_kp * 8 < K)[:, None] & n_mask[None, :],
            other=0,
        )
        xs = _x_planes(x, BLOCK_M, BLOCK_K)
        s, z = _tile_scales(
            scales_ptr, zeros_ptr, k0, K, offs_kp, offs_n, n_mask, stride_sg, stride_sn,
            GROUP_SIZE, BLOCK_K,
        )  # fmt: skip
        zs = z * s
        halves = ((q & 0xFFFF) | 0x4B000000, ((q >> 16) & 0xFFFF) | 0x4B000000)
        for h in tl.static_range(2):
            for p in tl.static_range(4):
                # Keep the sign and exponent (-2^23 as int32 is 0xFF800000) and nibble p.
                f = (halves[h] & (-8388608 | (0xF << (4 * p)))).to(tl.float32, bitcast=True)
                w = (f - 8388608.0) * (s * 16.0**-p) - zs  # (c - z) s
                acc = tl.dot(xs[4 * h + p], w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    mask = m_mask[:, None] & n_mask[None, :]
    tile_id = pid_m * tl.num_programs(1) + pid_n
    _store_or_reduce(
        acc, offs_m, offs_n, mask, tile_id, pid_k, partial_ptr, out_ptr, counter_ptr,
        M, N, stride_om, stride_on, SPLIT_K,
    )  # fmt: skip


@triton.jit
def _w4a16_dequantize_kernel(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    w_ptr,
    K,
    N,
    stride_qk,
    stride_qn,
    stride_sg,
    stride_sn,
    stride_wk,
    stride_wn,
    GROUP_SIZE: tl.constexpr,
    BLOCK_KP: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """W [K, N] in w's dtype from a [BLOCK_KP, BLOCK_N] tile of codes a program."""
    offs_kp = tl.program_id(0) * BLOCK_KP + tl.arange(0, BLOCK_KP)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_kp < K // 8)[:, None] & (offs_n < N)[None, :]
    q = tl.load(qweight_ptr + offs_kp[:, None] * stride_qk + offs_n[None, :] * stride_qn, mask=mask)
    sz_offs = (offs_kp * 8 // GROUP_SIZE)[:, None] * stride_sg + offs_n[None, :] * stride_sn
    s = tl.load(scales_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + sz_offs, mask=mask, other=0.0).to(tl.float32)
    for nibble in tl.static_range(8):
        w = (_int4_as_float(q, 4 * nibble) - z) * s
        rows = offs_kp * 8 + nibble
        w_ptrs = w_ptr + rows[:, None] * stride_wk + offs_n[None, :] * stride_wn
        tl.store(w_ptrs, w.to(w_ptr.dtype.element_ty), mask=mask)


def w4a16_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """W [K, N] in `dtype`, one launch (the prefill path multiplies it with a dense GEMM)."""
    k, n = qweight.shape[0] * PACK, qweight.shape[1]
    w = torch.empty(k, n, dtype=dtype, device=qweight.device)
    block_kp, block_n = 16, 128
    grid = (triton.cdiv(k // PACK, block_kp), triton.cdiv(n, block_n))
    _w4a16_dequantize_kernel[grid](
        qweight, scales, zeros, w, k, n, *qweight.stride(), *scales.stride(), *w.stride(),
        GROUP_SIZE=group_size, BLOCK_KP=block_kp, BLOCK_N=block_n,
    )  # fmt: skip
    return w


_counters: dict[tuple[torch.device, str], torch.Tensor] = {}


def _split_counters(device: torch.device, purpose: str = "split_k") -> torch.Tensor:
    """MAX_COLUMN_TILES zeroed int32 counters for the "last program combines" pattern, kept per
    device and `purpose` (one set per kind of kernel: the split-K GEMMs' column tiles, the decode
    attention's (seq, kv head) pairs): each launch leaves them zero again, so they are allocated
    once (before any CUDA graph captures a launch)."""
    key = (device, purpose)
    if key not in _counters:
        _counters[key] = torch.zeros(MAX_COLUMN_TILES, dtype=torch.int32, device=device)
    return _counters[key]


def _split_k(tiles: int, k_tiles: int, programs_per_sm: int = 4) -> int:
    return max(1, min(triton.cdiv(programs_per_sm * NUM_SMS, tiles), k_tiles // 2))


def _config(m: int, n: int, k: int, group_size: int) -> dict[str, int]:
    """Tile sizes by the rows' regime (see the module docstring): decode batches split K until
    the GPU has a few programs a SM; larger ones fill it with tiles."""
    if m <= GEMV_ROWS:
        # One warp, 8 columns a thread: ~3.2 SASS instructions a weight at 134 registers under
        # Triton 3.6 (167 under 3.9), 12-15 programs a SM (benchmark/w4a16_sass.py, NOTES.md).
        block_n, block_k = 256, min(group_size, 64)
        split_k = _split_k(m * triton.cdiv(n, block_n), k // block_k, programs_per_sm=12)
        return dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=1)
    block_k = 128  # a nibble plane of 16 rows: the smallest tile a dot takes
    if m <= 64:
        block_m, block_n, num_warps = (16 if m <= 16 else 64), 64, 4
        tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
        split_k = _split_k(tiles, triton.cdiv(k, block_k))
    else:
        block_m, block_n, split_k, num_warps = 64, 128, 1, 4
    return dict(
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=num_warps
    )


def w4a16_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    config: dict[str, int] | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ W [K, N] (+ bias [N]) -> [..., N] in x's dtype, W as the module docstring
    lays it out; the one-row GEMV adds the bias in its sum, larger inputs after the product.
    Beyond `FUSED_ROWS` rows, W is dequantized once and a dense GEMM multiplies: there the
    weight bytes no longer bound the time, and the dense GEMM's tiles win. `config` forces the fused kernels' tiles (benchmarks).
    Split-K sums are deterministic: the last program of a column tile adds the partials in
    split order."""
    k = x.shape[-1]
    n = qweight.shape[1]
    assert qweight.dtype == torch.int32 and qweight.shape[0] * PACK == k, (
        f"qweight {tuple(qweight.shape)} {qweight.dtype} does not pack K={k} rows"
    )
    assert group_size in (32, 64, 128) and k % group_size == 0, (
        f"group size {group_size} must be 32, 64 or 128 and divide K={k}"
    )
    assert scales.shape == zeros.shape == (k // group_size, n), "scales/zeros: [K / G, N]"
    assert bias is None or bias.shape == (n,), f"bias {tuple(bias.shape)} is not [N={n}]"
    x2 = x.reshape(-1, k)
    one_row = x2.shape[0] <= GEMV_ROWS
    out = _w4a16_gemm(x2, qweight, scales, zeros, group_size, config, bias if one_row else None)
    if bias is not None and not one_row:
        out = out + bias
    return out.view(*x.shape[:-1], n)


def _w4a16_gemm(
    x2: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    config: dict[str, int] | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`w4a16_gemm` of rows x2 [M, K]; `bias` only at M <= GEMV_ROWS."""
    (m, k), n = x2.shape, qweight.shape[1]
    if config is None and m > FUSED_ROWS:
        return x2 @ w4a16_dequantize(qweight, scales, zeros, group_size, x2.dtype)
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if not (m and n):
        return out
    cfg = config or _config(m, n, k, group_size)
    split = cfg["SPLIT_K"]
    partial = torch.empty(split, m, n, dtype=torch.float32, device=x2.device) if split > 1 else out
    strides = (*x2.stride(), *qweight.stride(), *scales.stride(), *out.stride())
    args = (x2, qweight, scales, zeros, partial, out, _split_counters(x2.device), m, n, k, *strides)
    column_tiles = triton.cdiv(m, cfg.get("BLOCK_M", 1)) * triton.cdiv(n, cfg["BLOCK_N"])
    assert column_tiles <= MAX_COLUMN_TILES, f"{column_tiles} output tiles: too many counters"
    if m <= GEMV_ROWS:
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, m)
        # The batch-1 decode chain's link: one launch (the split-K sum and the counter reset
        # are inside it), so with PDL it overlaps both neighbours.
        pdl = pdl_enabled(x2.device)
        _w4a16_gemv_kernel[grid](
            *args, bias if bias is not None else scales, GROUP_SIZE=group_size,
            HAS_BIAS=bias is not None, PDL=pdl, **cfg, **pdl_launch_options(pdl),
        )  # fmt: skip
    else:
        assert bias is None, "the tensor-core kernel takes no bias"
        assert cfg["BLOCK_K"] >= 128, "BLOCK_K >= 128: each nibble plane feeds a dot 16 rows deep"
        grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
        precision = "ieee" if x2.dtype == torch.float32 else "tf32"
        _w4a16_gemm_kernel[grid](*args, GROUP_SIZE=group_size, **cfg, DOT_PRECISION=precision)
    return out


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
