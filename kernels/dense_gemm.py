"""Dense half-precision GEMM for 16-512-row decode steps: y [M, N] = x [M, K] @ W [N, K]^T
(+ bias), W row-major as `nn.Linear` holds it, fp32 accumulation, output in x's dtype.

FLOPs = 2 M N K; bytes ~= 2 (N K + M K + M N). At 256-512 rows an 8B model's linears are
compute-bound, yet cuBLAS reaches only 64-77% of the FLOP floor on them at 256 rows
(benchmark/NOTES.md, session 7). To fill 132 SMs it either cuts small tiles (96 x 128 or
128 x 64: 128 of them on q/k/v and o, each moving more operand bytes per FLOP), splits K with a
reduction (down), or runs 1.7 waves of large tiles (gate/up, the second wave part idle). Here a
persistent grid of one program a SM shares the work out by K iterations instead of by tiles
(stream-K, Osama et al. 2023), so large tiles fill every SM: the (tile, K iteration) space of
the last one to two waves' tiles is cut into equal, contiguous shares, and the tiles before them
go whole to the programs in turn (data-parallel). A tile cut between programs is summed by the
one that finishes its share of it last, which adds the fp32 partials in program order
(deterministic, one launch: the "last program sums" of `w4a16_gemm`). Shapes whose tiles fill
the SMs in whole waves take the plain tiled path: the same kernel with a program a tile. On
Hopper the tiles load through TMA tensor descriptors; elsewhere, through pointers.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .w4a16_gemm import MAX_COLUMN_TILES, NUM_SMS, _split_counters

# Tiled, not stream-K, from this many waves of tiles on: the last wave's idle share is small.
TILED_WAVES = 8
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for benchmark/gpu_dense_gemm.py to time on
# Hopper (not yet measured): 64-row tiles for <= 64 rows, 128 and 256 (cuBLAS's own gate/up
# tile, one M tile at 256 rows) for more; K tiles of 64 with 3-4 stages in flight, or 128 deep;
# each within ~192 KB of shared memory (an H200 SM has 228 KB) with the epilogue's room.
HOPPER_CANDIDATES = [
    (64, 128, 64, 4, 4),
    (64, 256, 64, 8, 3),
    (128, 64, 128, 4, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
]


@triton.jit
def _tile_sum(x_in, w_in, tile, k_first, k_last, M, N, K, stride_xm, stride_xk, stride_wn,
              stride_wk, EVEN_K: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """x [BLOCK_M, K tiles k_first..k_last) @ W^T for output tile `tile`, in fp32. Tiles run
    along M first, so the programs that read one column tile of W run side by side and its
    second read comes from L2. With USE_TMA, `x_in` and `w_in` are tensor descriptors and the
    tensor-memory accelerator copies each tile (rows and columns past M, N, K read as zeros);
    else they are pointers, rows past M and N read row M - 1 / N - 1 (clamped, not masked: the
    loads stay unpredicated); either way those rows are never stored."""
    num_m = tl.cdiv(M, BLOCK_M)
    m0, n0 = (tile % num_m) * BLOCK_M, (tile // num_m) * BLOCK_N
    offs_m, offs_n = m0 + tl.arange(0, BLOCK_M), n0 + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_TMA:  # one return at the end: no early return out of a constexpr branch
        for kt in range(k_first, k_last):
            x = x_in.load([m0, kt * BLOCK_K])
            w = w_in.load([n0, kt * BLOCK_K])
            acc = tl.dot(x, w.T, acc, input_precision=DOT_PRECISION)
    else:
        offs_k = k_first * BLOCK_K + tl.arange(0, BLOCK_K)
        x_ptrs = x_in + tl.minimum(offs_m, M - 1)[:, None] * stride_xm
        x_ptrs += offs_k[None, :] * stride_xk
        w_ptrs = w_in + tl.minimum(offs_n, N - 1)[None, :] * stride_wn
        w_ptrs += offs_k[:, None] * stride_wk
        for kt in range(k_first, k_last):
            if EVEN_K:
                x = tl.load(x_ptrs)
                w = tl.load(w_ptrs)
            else:
                k_mask = kt * BLOCK_K + tl.arange(0, BLOCK_K) < K
                x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
            acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
    return acc, offs_m, offs_n


@triton.jit
def _store_tile(acc, offs_m, offs_n, bias_ptr, out_ptr, M, N, stride_om, stride_on,
                HAS_BIAS: tl.constexpr):  # fmt: skip
    if HAS_BIAS:
        acc += tl.load(bias_ptr + tl.minimum(offs_n, N - 1)).to(tl.float32)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _share_owner(it, base, rem):
    """The program whose stream-K share holds iteration `it`: the first `rem` shares are
    `base + 1` long, the others `base`."""
    big = rem * (base + 1)
    return tl.where(it < big, it // (base + 1), rem + (it - big) // tl.maximum(base, 1))


@triton.jit
def _share_start(pid, base, rem):
    return pid * base + tl.minimum(pid, rem)


@triton.jit(do_not_specialize=["M", "SK_TILES"])
def _dense_gemm_kernel(
    x_in,
    w_in,
    bias_ptr,
    partial_ptr,
    out_ptr,
    counter_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_om,
    stride_on,
    SK_TILES,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program p of P: whole tiles p, p + P, ... of the first `tiles - SK_TILES`, then its
    equal share of the last SK_TILES tiles' K iterations. A share's middle tiles are whole and
    stored; its first and last may be cut: their fp32 partials go to slots 2p and 2p + 1, and
    the program that completes a tile's count (one per program covering it) sums the slots."""
    pid, num_programs = tl.program_id(0), tl.num_programs(0)
    iters = tl.cdiv(K, BLOCK_K)
    dp_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N) - SK_TILES
    for tile in range(pid, dp_tiles, num_programs):
        acc, offs_m, offs_n = _tile_sum(
            x_in, w_in, tile, 0, iters, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
            EVEN_K, USE_TMA, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )  # fmt: skip
        _store_tile(acc, offs_m, offs_n, bias_ptr, out_ptr, M, N, stride_om, stride_on, HAS_BIAS)
    base, rem = SK_TILES * iters // num_programs, SK_TILES * iters % num_programs
    it = _share_start(pid, base, rem)
    end = _share_start(pid + 1, base, rem)
    first_tile = it // iters
    offs_slot = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    while it < end:
        sk_tile = it // iters
        k_first = it - sk_tile * iters
        k_last = tl.minimum(iters, k_first + end - it)
        acc, offs_m, offs_n = _tile_sum(
            x_in, w_in, dp_tiles + sk_tile, k_first, k_last, M, N, K, stride_xm, stride_xk,
            stride_wn, stride_wk, EVEN_K, USE_TMA, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION,
        )  # fmt: skip
        if k_last - k_first == iters:
            _store_tile(
                acc, offs_m, offs_n, bias_ptr, out_ptr, M, N, stride_om, stride_on, HAS_BIAS
            )
        else:
            slot = 2 * pid + (sk_tile != first_tile).to(tl.int32)
            tl.store(partial_ptr + slot * BLOCK_M * BLOCK_N + offs_slot, acc)
            tl.debug_barrier()  # every thread's partial is written before the counter moves
            owner_first = _share_owner(sk_tile * iters, base, rem)
            owner_last = _share_owner(sk_tile * iters + iters - 1, base, rem)
            done = tl.atomic_add(counter_ptr + sk_tile, 1, sem="acq_rel")
            if done == owner_last - owner_first:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for owner in range(owner_first, owner_last + 1):
                    # An owner's slot 0 holds the tile its share starts in, slot 1 its last.
                    owner_first_tile = _share_start(owner, base, rem) // iters
                    owner_slot = 2 * owner + (sk_tile != owner_first_tile).to(tl.int32)
                    total += tl.load(
                        partial_ptr + owner_slot * BLOCK_M * BLOCK_N + offs_slot,
                        cache_modifier=".cg",
                    )
                _store_tile(
                    total, offs_m, offs_n, bias_ptr, out_ptr, M, N, stride_om, stride_on, HAS_BIAS
                )
                tl.atomic_xchg(counter_ptr + sk_tile, 0)
        it += k_last - k_first


def gemm_config(m: int) -> dict[str, int]:
    """Default tiles (a guess until benchmark/gpu_dense_gemm.py has timed the candidates): 64
    rows a tile up to 64 rows, 128 beyond; 128 columns; K tiles of 64 four deep."""
    if m <= 64:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)


def gemm_candidates(m: int) -> list[dict[str, int]]:
    """The Hopper candidates whose row tile is at most M rounded up to a power of two (and 64):
    a taller tile would only multiply padding."""
    rows = max(64, triton.next_power_of_2(m))
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
    return [dict(zip(keys, c, strict=True)) for c in HOPPER_CANDIDATES if c[0] <= rows]


def stream_k_tiles(tiles: int, num_sms: int, stream_k: bool | None = None) -> int:
    """How many of the last tiles are shared out by K iterations. None chooses: none when the
    tiles fill whole waves or are many (`TILED_WAVES`); otherwise all of them up to two waves,
    and beyond, the last partial wave plus one whole wave (each SM then gets 1-2 tiles' worth
    of stream-K work after its whole tiles: the "data-parallel + two-tile stream-K" hybrid)."""
    if stream_k is None:
        stream_k = tiles % num_sms != 0 and tiles < TILED_WAVES * num_sms
    if not stream_k:
        return 0
    waves = tiles // num_sms
    return tiles if waves <= 1 else tiles - (waves - 1) * num_sms


@functools.cache
def device_sms(device: torch.device) -> int:
    """The persistent grid's size: the GPU's SM count (an H200's off the GPU)."""
    if device.type != "cuda":
        return NUM_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def _has_tma(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _tma_ready(t: torch.Tensor) -> bool:
    """A tensor descriptor needs rows contiguous and each row's start 16-byte aligned."""
    row_bytes = t.stride(0) * t.element_size()
    return t.stride(1) == 1 and row_bytes % 16 == 0 and t.data_ptr() % 16 == 0


def _operands(x2: torch.Tensor, weight: torch.Tensor, cfg: dict[str, int], tma: bool | None):
    """x and W as the kernel reads them: tensor descriptors of the config's tiles (Hopper and
    later, where the operands allow, or when `tma` asks), else the tensors themselves."""
    ready = _tma_ready(x2) and _tma_ready(weight)
    assert not tma or ready, "TMA needs rows contiguous and 16-byte aligned; pass tma=False"
    use_tma = ready and _has_tma(x2.device) if tma is None else tma
    if not use_tma:
        return x2, weight, False
    x_in = TensorDescriptor.from_tensor(x2, [cfg["BLOCK_M"], cfg["BLOCK_K"]])
    w_in = TensorDescriptor.from_tensor(weight, [cfg["BLOCK_N"], cfg["BLOCK_K"]])
    return x_in, w_in, True


def launch_plan(
    m: int, n: int, k: int, cfg: dict[str, int], sms: int, stream_k: bool | None = None
) -> tuple[int, int]:
    """(programs, stream-K tiles): a program a tile without stream-K; else a program a SM,
    none without an iteration."""
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    sk_tiles = stream_k_tiles(tiles, sms, stream_k)
    if sk_tiles == 0:
        return tiles, 0
    if sk_tiles < tiles:  # whole tiles first: every program has at least one
        return sms, sk_tiles
    return min(sms, sk_tiles * triton.cdiv(k, cfg["BLOCK_K"])), sk_tiles


def dense_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    stream_k: bool | None = None,
    num_sms: int | None = None,
    tma: bool | None = None,
) -> torch.Tensor:
    """x [..., K] @ weight [N, K]^T (+ bias [N]) -> [..., N] in x's dtype. `config` forces the
    tiles, `stream_k` the schedule (None: `stream_k_tiles` chooses), `num_sms` the persistent
    grid (default: the device's SM count), `tma` the loads (None: TMA on Hopper and later)."""
    k = x.shape[-1]
    n = weight.shape[0]
    assert weight.shape == (n, k), f"weight {tuple(weight.shape)} is not [N, K={k}]"
    assert bias is None or bias.shape == (n,), f"bias {tuple(bias.shape)} is not [N={n}]"
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if not (m and n):
        return out.view(*x.shape[:-1], n)
    assert k > 0, "K = 0: nothing to multiply; use torch.zeros"
    cfg = dict(config or gemm_config(m))
    programs, sk_tiles = launch_plan(m, n, k, cfg, num_sms or device_sms(x.device), stream_k)
    assert sk_tiles <= MAX_COLUMN_TILES, f"{sk_tiles} stream-K tiles: too many counters"
    slot_shape = (2 * programs, cfg["BLOCK_M"] * cfg["BLOCK_N"])
    partial = torch.empty(slot_shape, dtype=torch.float32, device=x.device) if sk_tiles else out
    x_in, w_in, use_tma = _operands(x2, weight, cfg, tma)
    _dense_gemm_kernel[(programs,)](
        x_in, w_in, bias if bias is not None else weight, partial, out, _split_counters(x.device),
        m, n, k, *x2.stride(), *weight.stride(), *out.stride(), sk_tiles,
        HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, USE_TMA=use_tma,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", **cfg,
    )  # fmt: skip
    return out.view(*x.shape[:-1], n)


def dense_gemm_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same in float32, cast to x's dtype."""
    y = x.float() @ weight.float().t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
