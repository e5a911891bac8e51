"""Batched LoRA over one linear: `out[t, shard] += scale[s] * (x[t] @ A[s]^T) @ B[s]^T` where
`s` is the adapter slot of row t (rows of the base model get nothing).

Punica/S-LoRA's segmented gather-matmul (SGMV) in two kernels. The rows are grouped by slot
into segments (`lora_segments`: `order` lists the row indices slot by slot, `seg_start` /
`seg_len` where each slot's rows lie in it), so each program multiplies a tile of up to
BLOCK_M rows of one adapter with that adapter's weights (`tl.dot`): an adapter's A and B are
read once per row tile, not once per row. The grid covers every slot and `num_rows` rows per
slot; programs past their segment return at once, so a CUDA graph's fixed grid serves any mix.
- shrink: `xa[t] = x[t] @ A[s]^T`, A stacked `[slots, R_total, in]` (R_total = shards * rank),
  xa fp32. FLOPs 2*T*R_total*in; bytes ~ T*in + (row tiles)*R_total*in.
- expand, per shard: `out[t, start:start+size] += scale[s] * xa[t, col:col+R] @ B[s]^T`, B
  stacked `[slots, out, R]`. FLOPs 2*T*size*R; bytes ~ 2*T*size + (row tiles)*size*R.
Both are bandwidth-bound at LoRA ranks (<= 64), like the base linear they ride on.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16  # rows of one adapter per program (tl.dot's minimum)


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    order_ptr,
    seg_start_ptr,
    seg_len_ptr,
    out_ptr,
    in_size,
    r_total,
    stride_xt,
    stride_as,
    stride_ar,
    stride_ot,
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
    offs_r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < r_total
    a_base = a_ptr + slot.to(tl.int64) * stride_as
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(0, in_size, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        k_mask = offs_k < in_size
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
        out_ptr + rows[:, None] * stride_ot + offs_r[None, :],
        acc,
        mask=m_mask[:, None] & r_mask[None, :],
    )


@triton.jit
def _lora_expand_kernel(
    xa_ptr,
    b_ptr,
    order_ptr,
    seg_start_ptr,
    seg_len_ptr,
    scale_ptr,
    out_ptr,
    size,
    rank,
    out_start,
    xa_col,
    stride_xat,
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
    seg_start = tl.load(seg_start_ptr + slot)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seg_len
    rows = tl.load(order_ptr + seg_start + offs_m, mask=m_mask, other=0).to(tl.int64)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < size
    r_mask = offs_r < rank
    xa = tl.load(
        xa_ptr + rows[:, None] * stride_xat + xa_col + offs_r[None, :],
        mask=m_mask[:, None] & r_mask[None, :],
        other=0.0,
    )
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
) -> torch.Tensor:
    """x [T, in], lora_a [num_slots, R_total, in] -> [T, R_total] float32 (rows in no
    segment stay zero)."""
    assert x.dim() == 2 and lora_a.dim() == 3 and x.shape[1] == lora_a.shape[2], (
        f"x {tuple(x.shape)} and lora_a {tuple(lora_a.shape)} disagree on the input size"
    )
    assert seg_len.shape[0] == lora_a.shape[0], "one segment per adapter slot"
    _check_segments(order, seg_start, seg_len)
    x, lora_a = x.contiguous(), lora_a.contiguous()
    num_tokens, in_size = x.shape
    r_total = lora_a.shape[1]
    out = torch.zeros(num_tokens, r_total, dtype=torch.float32, device=x.device)
    if num_tokens and r_total:
        block_r = max(16, min(128, triton.next_power_of_2(r_total)))
        block_k = max(16, min(128, triton.next_power_of_2(in_size)))
        grid = (lora_a.shape[0], triton.cdiv(num_tokens, BLOCK_M), triton.cdiv(r_total, block_r))
        _lora_shrink_kernel[grid](
            x, lora_a, order, seg_start, seg_len, out, in_size, r_total,
            x.stride(0), lora_a.stride(0), lora_a.stride(1), out.stride(0),
            BLOCK_M=BLOCK_M, BLOCK_R=block_r, BLOCK_K=block_k,
            DOT_PRECISION=_precision(lora_a.dtype),
        )  # fmt: skip
    return out


def lora_expand(
    xa: torch.Tensor,
    lora_b: torch.Tensor,
    order: torch.Tensor,
    seg_start: torch.Tensor,
    seg_len: torch.Tensor,
    scales: torch.Tensor,
    out: torch.Tensor,
    out_start: int,
    size: int,
    xa_col: int,
) -> None:
    """In place: out[t, out_start:out_start+size] += scales[s] * xa[t, xa_col:xa_col+R] @
    lora_b[s, out_start:out_start+size]^T for the rows of each slot s. lora_b [slots, out, R]."""
    assert out.dim() == 2 and out.stride(1) == 1, "out must be [T, out] with unit column stride"
    assert lora_b.shape[1] == out.shape[1], (
        f"lora_b rows {lora_b.shape[1]} != out columns {out.shape[1]}"
    )
    assert out_start + size <= out.shape[1] and xa_col + lora_b.shape[2] <= xa.shape[1]
    _check_segments(order, seg_start, seg_len)
    lora_b, xa = lora_b.contiguous(), xa.contiguous()
    num_tokens, rank = out.shape[0], lora_b.shape[2]
    if not (num_tokens and size and rank):
        return
    block_n = max(16, min(128, triton.next_power_of_2(size)))
    grid = (lora_b.shape[0], triton.cdiv(num_tokens, BLOCK_M), triton.cdiv(size, block_n))
    _lora_expand_kernel[grid](
        xa, lora_b, order, seg_start, seg_len, scales, out, size, rank, out_start, xa_col,
        xa.stride(0), lora_b.stride(0), lora_b.stride(1), out.stride(0),
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
