"""Batched LoRA over one linear: `out[t, shard] += scale[s] * (x[t] @ A[s]^T) @ B[s]^T` where
`s` is the adapter slot of row t (rows of the base model get nothing).

Punica/S-LoRA's segmented gather-matmul (SGMV) in two launches per linear, whatever its number
of output shards (q/k/v, gate/up). The rows are grouped by slot into segments (`lora_segments`:
`order` lists the row indices slot by slot, `seg_start` / `seg_len` where each slot's rows lie
in it), so each program multiplies a tile of up to BLOCK_M rows of one adapter with that
adapter's weights (`tl.dot`): an adapter's A and B are read once per row tile, not once per
row. The grid covers every slot and `num_rows` rows per slot; programs past their segment
return at once, so a CUDA graph's fixed grid serves any mix.
- shrink, split over the input dimension: `part[k, t] = x[t, Kk] @ A[s, :, Kk]^T` for each of
  `splits` slices Kk of the input, fp32. A decode step has few rows per adapter, so one
  program per (slot, row tile) would stream all of A alone (8 programs for 8 adapters); the
  split gives the GPU `splits` times more programs, each reading in/splits columns.
  FLOPs 2*T*R_total*in; bytes ~ T*in + (row tiles)*R_total*in + 4*splits*T*R_total.
- expand, every shard in one grid (each N-tile lies in one shard): `out[t, start:start+size]
  += scale[s] * (sum_k part[k, t, i*R:(i+1)*R]) @ B[s, start:start+size]^T`, B stacked
  `[slots, out, R]`. FLOPs 2*T*out*R; bytes ~ 2*T*out + (row tiles)*out*R, plus each
  program's 4*splits*BLOCK_M*R bytes of partial sums (from L2).
No torch op runs between them (the partial sums are allocated, never zeroed: the expand reads
only rows the shrink wrote), so a decode graph replays two kernels per adapted linear.
Both are bandwidth-bound at LoRA ranks (<= 64), like the base linear they ride on.
One kernel doing both (each program recomputing its rows' x @ A^T) was counted and left: every
N-tile would re-read x and A, on Llama-3-8B's gate_up at batch 64 over 8 adapters 42 MB for
1024-column tiles against 7 MB of partial sums here (benchmark/NOTES.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16  # rows of one adapter per program (tl.dot's minimum)
# The shrink's split of the input dimension (see `lora_num_splits`): about two programs per
# SM of an H100/H200 (132 SMs), each slice at least two BLOCK_K steps, partial sums bounded.
TARGET_PROGRAMS = 256
MIN_SPLIT_K = 256
MAX_SPLITS = 8


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    order_ptr,
    seg_start_ptr,
    seg_len_ptr,
    part_ptr,
    in_size,
    r_total,
    split_k,
    num_r_tiles,
    stride_xt,
    stride_as,
    stride_ar,
    stride_pk,
    stride_pt,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    slot = tl.program_id(0)
    seg_len = tl.load(seg_len_ptr + slot)
    m0 = tl.program_id(1) * BLOCK_M
    if m0 >= seg_len:
        return
    seg_start = tl.load(seg_start_ptr + slot)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seg_len
    rows = tl.load(order_ptr + seg_start + offs_m, mask=m_mask, other=0).to(tl.int64)
    split = tl.program_id(2) // num_r_tiles
    offs_r = (tl.program_id(2) % num_r_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < r_total
    a_base = a_ptr + slot.to(tl.int64) * stride_as
    k_end = tl.minimum((split + 1) * split_k, in_size)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(split * split_k, k_end, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        x = tl.load(
            x_ptr + rows[:, None] * stride_xt + offs_k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        a = tl.load(
            a_base + offs_r[None, :] * stride_ar + offs_k[:, None],
            mask=r_mask[None, :] & k_mask[:, None],
            other=0.0,
        )
        acc += tl.dot(x.to(a.dtype), a, input_precision=DOT_PRECISION)
    tl.store(
        part_ptr + split * stride_pk + rows[:, None] * stride_pt + offs_r[None, :],
        acc,
        mask=m_mask[:, None] & r_mask[None, :],
    )


@triton.jit
def _lora_expand_kernel(
    part_ptr,
    b_ptr,
    order_ptr,
    seg_start_ptr,
    seg_len_ptr,
    scale_ptr,
    out_ptr,
    size0,
    size1,
    size2,
    rank,
    num_splits,
    stride_pk,
    stride_pt,
    stride_bs,
    stride_bo,
    stride_ot,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    slot = tl.program_id(0)
    seg_len = tl.load(seg_len_ptr + slot)
    m0 = tl.program_id(1) * BLOCK_M
    if m0 >= seg_len:
        return
    # The N-tiles run shard after shard (up to three: q/k/v); this tile's shard, its first
    # output column and its A rows (xa columns) follow from the shard sizes.
    tile = tl.program_id(2)
    tiles0, tiles1 = tl.cdiv(size0, BLOCK_N), tl.cdiv(size1, BLOCK_N)
    in1 = tile >= tiles0
    in2 = tile >= tiles0 + tiles1
    shard = in1.to(tl.int32) + in2.to(tl.int32)
    out_start = tl.where(in2, size0 + size1, tl.where(in1, size0, 0))
    size = tl.where(in2, size2, tl.where(in1, size1, size0))
    tile -= tl.where(in2, tiles0 + tiles1, tl.where(in1, tiles0, 0))

    seg_start = tl.load(seg_start_ptr + slot)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seg_len
    rows = tl.load(order_ptr + seg_start + offs_m, mask=m_mask, other=0).to(tl.int64)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < size
    r_mask = offs_r < rank
    xa_ptrs = part_ptr + rows[:, None] * stride_pt + shard * rank + offs_r[None, :]
    xa_mask = m_mask[:, None] & r_mask[None, :]
    xa = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(num_splits):
        xa += tl.load(xa_ptrs + k * stride_pk, mask=xa_mask, other=0.0)
    b = tl.load(
        b_ptr
        + slot.to(tl.int64) * stride_bs
        + (out_start + offs_n)[None, :] * stride_bo
        + offs_r[:, None],
        mask=n_mask[None, :] & r_mask[:, None],
        other=0.0,
    )
    delta = tl.dot(xa.to(b.dtype), b, input_precision=DOT_PRECISION) * tl.load(scale_ptr + slot).to(
        tl.float32
    )
    out_ptrs = out_ptr + rows[:, None] * stride_ot + out_start + offs_n[None, :]
    io_mask = m_mask[:, None] & n_mask[None, :]
    base = tl.load(out_ptrs, mask=io_mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (base + delta).to(out_ptr.dtype.element_ty), mask=io_mask)


def lora_segments(row_slots: list[int], num_slots: int) -> tuple[list[int], list[int], list[int]]:
    """Host-side: (order, seg_start, seg_len) of rows grouped by slot (-1 rows left out);
    `order` is padded with zeros to len(row_slots) so its size does not depend on the mix."""
    by_slot: list[list[int]] = [[] for _ in range(num_slots)]
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            by_slot[slot].append(row)
    order = [row for rows in by_slot for row in rows]
    seg_len = [len(rows) for rows in by_slot]
    seg_start = [sum(seg_len[:s]) for s in range(num_slots)]
    return order + [0] * (len(row_slots) - len(order)), seg_start, seg_len


def lora_num_splits(num_rows: int, num_slots: int, in_size: int) -> int:
    """How many input slices the shrink splits into: enough programs to fill a GPU
    (TARGET_PROGRAMS) over the row tiles that can hold rows, each slice >= MIN_SPLIT_K wide.
    A prefill-sized step has row tiles enough and gets 1. Static in the step's row count, so
    a CUDA graph captures it."""
    row_tiles = triton.cdiv(num_rows, BLOCK_M) + min(num_rows, num_slots)
    by_size = triton.cdiv(in_size, MIN_SPLIT_K)
    return max(1, min(by_size, MAX_SPLITS, TARGET_PROGRAMS // max(row_tiles, 1)))


def _precision(dtype: torch.dtype) -> str:
    """fp32 adapters multiply in full fp32 ('ieee'); tl.dot's default on a GPU is tf32, whose
    10-bit mantissa misses an fp32 reference by ~1e-3."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_segments(order: torch.Tensor, seg_start: torch.Tensor, seg_len: torch.Tensor) -> None:
    assert order.dtype == seg_start.dtype == seg_len.dtype == torch.int32, "segments are int32"
    assert seg_start.shape == seg_len.shape, "one start and one length per slot"


def lora_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    order: torch.Tensor,
    seg_start: torch.Tensor,
    seg_len: torch.Tensor,
    num_splits: int | None = None,
) -> torch.Tensor:
    """x [T, in], lora_a [num_slots, R_total, in] -> partial sums [splits, T, R_total] float32
    whose sum over dim 0 is x @ A^T for the rows in a segment (other rows: unwritten memory).
    `num_splits` None: `lora_num_splits`'s choice."""
    assert x.dim() == 2 and lora_a.dim() == 3 and x.shape[1] == lora_a.shape[2] > 0, (
        f"x {tuple(x.shape)} and lora_a {tuple(lora_a.shape)} disagree on the input size"
    )
    assert seg_len.shape[0] == lora_a.shape[0], "one segment per adapter slot"
    _check_segments(order, seg_start, seg_len)
    x, lora_a = x.contiguous(), lora_a.contiguous()
    num_tokens, in_size = x.shape
    num_slots, r_total = lora_a.shape[0], lora_a.shape[1]
    splits = num_splits or lora_num_splits(num_tokens, num_slots, in_size)
    block_k = max(16, min(128, triton.next_power_of_2(triton.cdiv(in_size, splits))))
    # every slice a whole number of BLOCK_K steps; rounding up may leave fewer slices
    split_k = triton.cdiv(triton.cdiv(in_size, splits), block_k) * block_k
    splits = triton.cdiv(in_size, split_k)
    part = torch.empty(splits, num_tokens, r_total, dtype=torch.float32, device=x.device)
    if num_tokens and r_total:
        block_r = max(16, min(128, triton.next_power_of_2(r_total)))
        r_tiles = triton.cdiv(r_total, block_r)
        grid = (num_slots, triton.cdiv(num_tokens, BLOCK_M), splits * r_tiles)
        _lora_shrink_kernel[grid](
            x, lora_a, order, seg_start, seg_len, part, in_size, r_total, split_k, r_tiles,
            x.stride(0), lora_a.stride(0), lora_a.stride(1), part.stride(0), part.stride(1),
            BLOCK_M=BLOCK_M, BLOCK_R=block_r, BLOCK_K=block_k,
            DOT_PRECISION=_precision(lora_a.dtype),
        )  # fmt: skip
    return part


def lora_expand(
    part: torch.Tensor,
    lora_b: torch.Tensor,
    order: torch.Tensor,
    seg_start: torch.Tensor,
    seg_len: torch.Tensor,
    scales: torch.Tensor,
    out: torch.Tensor,
    shard_sizes: list[int],
) -> None:
    """In place, for the rows of each slot s and each output shard i (sizes `shard_sizes`,
    side by side in out's columns, at most 3): out[t, shard i] += scales[s] *
    part[:, t, i*R:(i+1)*R].sum(0) @ lora_b[s, shard i]^T. `part` is `lora_shrink`'s output,
    lora_b [slots, out, R]."""
    assert out.dim() == 2 and out.stride(1) == 1, "out must be [T, out] with unit column stride"
    assert 1 <= len(shard_sizes) <= 3, f"1 to 3 output shards (q/k/v), got {len(shard_sizes)}"
    assert sum(shard_sizes) == lora_b.shape[1] == out.shape[1], (
        f"shards {shard_sizes}, lora_b rows {lora_b.shape[1]} and out columns {out.shape[1]} "
        "must agree"
    )
    rank = lora_b.shape[2]
    assert part.dim() == 3 and part.shape[2] == len(shard_sizes) * rank, (
        f"partial sums {tuple(part.shape)} need {len(shard_sizes)} x rank {rank} columns"
    )
    _check_segments(order, seg_start, seg_len)
    lora_b, part = lora_b.contiguous(), part.contiguous()
    num_tokens = out.shape[0]
    if not (num_tokens and out.shape[1] and rank):
        return
    block_n = max(16, min(128, triton.next_power_of_2(max(shard_sizes))))
    sizes = [*shard_sizes, 0, 0][:3]
    num_n_tiles = sum(triton.cdiv(size, block_n) for size in sizes)
    grid = (lora_b.shape[0], triton.cdiv(num_tokens, BLOCK_M), num_n_tiles)
    _lora_expand_kernel[grid](
        part, lora_b, order, seg_start, seg_len, scales, out, *sizes, rank, part.shape[0],
        part.stride(0), part.stride(1), lora_b.stride(0), lora_b.stride(1), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=max(16, triton.next_power_of_2(rank)),
        DOT_PRECISION=_precision(lora_b.dtype),
    )  # fmt: skip


def lora_ref(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slots: torch.Tensor,
    scales: torch.Tensor,
    shards: list[tuple[int, int]],
) -> torch.Tensor:
    """The delta the two kernels add, row by row: lora_a [slots, S*R, in], lora_b [slots, out,
    R], `slots` [T] each row's slot (-1: none), `shards` the (start, size) output rows of each
    of the S shards."""
    rank = lora_b.shape[2]
    delta = torch.zeros(x.shape[0], lora_b.shape[1], dtype=torch.float32, device=x.device)
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        xa = lora_a[slot].float() @ x[t].float()
        for s, (start, size) in enumerate(shards):
            b = lora_b[slot, start : start + size].float()
            delta[t, start : start + size] = scales[slot].float() * (
                b @ xa[s * rank : (s + 1) * rank]
            )
    return delta
