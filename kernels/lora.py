"""Batched LoRA over one linear: `out[t, shard] += scale[s] * (x[t] @ A[s]^T) @ B[s]^T` where
`s = slot[t]` is the adapter slot of row t (-1: the base model, nothing added).

Punica/S-LoRA's BGMV split in two kernels, each gathering its row's adapter by index, so one
launch serves a batch that mixes any number of adapters:
- shrink: `xa[t] = x[t] @ A[slot[t]]^T`, A stacked `[slots, R_total, in]` (R_total = shards *
  rank, fp32 out). Reads T*in + T*R_total*in elements; FLOPs 2*T*R_total*in.
- expand: for one shard, `out[t, start:start+size] += scale * xa[t, col:col+R] @ B^T`, B
  stacked `[slots, out_total, R]`. Reads T*size*R, read-modify-writes T*size.
Both are bandwidth-bound (rank <= 64): the adapter weights are the traffic, as in vLLM's
bgmv kernels. Rows of the base model return at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    slot_ptr,
    out_ptr,
    in_size,
    r_total,
    stride_xt,
    stride_as,
    stride_ar,
    stride_ot,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < r_total
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k in range(0, in_size, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        k_mask = offs_k < in_size
        x = tl.load(x_ptr + row * stride_xt + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(
            a_ptr + slot * stride_as + offs_r[:, None] * stride_ar + offs_k[None, :],
            mask=r_mask[:, None] & k_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    tl.store(out_ptr + row * stride_ot + offs_r, acc, mask=r_mask)


@triton.jit
def _lora_expand_kernel(
    xa_ptr,
    b_ptr,
    slot_ptr,
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
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < size
    r_mask = offs_r < rank
    xa = tl.load(xa_ptr + row * stride_xat + xa_col + offs_r, mask=r_mask, other=0.0)
    b = tl.load(
        b_ptr + slot * stride_bs + (out_start + offs_n)[:, None] * stride_bo + offs_r[None, :],
        mask=n_mask[:, None] & r_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    scale = tl.load(scale_ptr + slot).to(tl.float32)
    delta = tl.sum(b * xa[None, :], axis=1) * scale
    out_ptrs = out_ptr + row * stride_ot + out_start + offs_n
    base = tl.load(out_ptrs, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (base + delta).to(out_ptr.dtype.element_ty), mask=n_mask)


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """x [T, in], lora_a [num_slots, R_total, in], slots [T] (int, -1: none) -> [T, R_total]
    float32 (rows of slot -1 are left unwritten: zeros)."""
    assert x.dim() == 2 and lora_a.dim() == 3 and x.shape[1] == lora_a.shape[2], (
        f"x {tuple(x.shape)} and lora_a {tuple(lora_a.shape)} disagree on the input size"
    )
    assert slots.shape == (x.shape[0],), f"slots {tuple(slots.shape)} != ({x.shape[0]},)"
    x, lora_a = x.contiguous(), lora_a.contiguous()
    num_tokens, in_size = x.shape
    r_total = lora_a.shape[1]
    out = torch.zeros(num_tokens, r_total, dtype=torch.float32, device=x.device)
    if num_tokens and r_total:
        block_r = min(64, triton.next_power_of_2(r_total))
        block_k = min(256, triton.next_power_of_2(in_size))
        grid = (num_tokens, triton.cdiv(r_total, block_r))
        _lora_shrink_kernel[grid](
            x, lora_a, slots, out, in_size, r_total,
            x.stride(0), lora_a.stride(0), lora_a.stride(1), out.stride(0),
            BLOCK_R=block_r, BLOCK_K=block_k,
        )  # fmt: skip
    return out


def lora_expand(
    xa: torch.Tensor,
    lora_b: torch.Tensor,
    slots: torch.Tensor,
    scales: torch.Tensor,
    out: torch.Tensor,
    out_start: int,
    size: int,
    xa_col: int,
) -> None:
    """In place: out[t, out_start:out_start+size] += scales[s] * xa[t, xa_col:xa_col+R] @
    lora_b[s, out_start:out_start+size]^T for s = slots[t] >= 0. lora_b [num_slots, out, R]."""
    assert out.dim() == 2 and out.stride(1) == 1, "out must be [T, out] with unit column stride"
    assert lora_b.shape[1] == out.shape[1], (
        f"lora_b rows {lora_b.shape[1]} != out columns {out.shape[1]}"
    )
    assert out_start + size <= out.shape[1] and xa_col + lora_b.shape[2] <= xa.shape[1]
    lora_b, xa = lora_b.contiguous(), xa.contiguous()
    num_tokens, rank = out.shape[0], lora_b.shape[2]
    if not (num_tokens and size and rank):
        return
    block_n = min(128, triton.next_power_of_2(size))
    grid = (num_tokens, triton.cdiv(size, block_n))
    _lora_expand_kernel[grid](
        xa, lora_b, slots, scales, out, size, rank, out_start, xa_col,
        xa.stride(0), lora_b.stride(0), lora_b.stride(1), out.stride(0),
        BLOCK_N=block_n, BLOCK_R=triton.next_power_of_2(rank),
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
    R], `shards` the (start, size) output rows of each of the S shards."""
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
