"""Stage 2 of the split-K decode attention (paged_decode_attention.py): each head's output from
its splits' partial outputs [num_seqs, heads, splits, BLOCK_D] and log-sum-exps [.., splits],
each split weighted by `exp2(lse - max lse)`.

It runs as a second launch (`reduce_splits`, a program a (seq, head)), or inside stage 1: the
split of a (seq, kv head) that finishes last calls `combine_splits_of_heads` for its group of
query heads (`combine_splits=True` there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_launch_options, pdl_wait_then_release

# The in-kernel combine holds a group's partials [BLOCK_G, BLOCK_S, BLOCK_D] in fp32 registers:
# at most 128 a thread over 4 warps; past that (GQA 8 with 32 splits and more) the second launch.
MAX_COMBINE_ELEMENTS = 16384


@triton.jit
def combine_splits_of_heads(
    part_out_ptr, part_lse_ptr, out_ptr, seq, first_head, num_heads, head_dim, stride_os,
    stride_oh, stride_od, HEADS: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[seq, first_head .. first_head + HEADS) from their splits' partials: every head's every
    split in one [BLOCK_G, BLOCK_S, BLOCK_D] load, so the loads go out together (a head at a
    time, each a round trip to L2, made the in-kernel combine slower than the second launch:
    benchmark/NOTES.md, session 8). Read through L2 (`.cg`): inside stage 1 other programs
    wrote them, before the counter's acquire."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    heads = first_head + offs_g
    rows = (seq * num_heads + heads)[:, None] * NUM_SPLITS + offs_s[None, :]  # [G, S]
    gs_mask = (offs_g < HEADS)[:, None] & (offs_s < NUM_SPLITS)[None, :]
    lse = tl.load(part_lse_ptr + rows, mask=gs_mask, other=float("-inf"), cache_modifier=".cg")
    lse_max = tl.max(lse, axis=1)
    # A zero-length context leaves every lse at -inf: weight nothing and write zeros.
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    w = tl.exp2(lse - lse_max[:, None])
    parts = tl.load(
        part_out_ptr + rows[:, :, None] * BLOCK_D + offs_d[None, None, :],
        mask=gs_mask[:, :, None],
        other=0.0,
        cache_modifier=".cg",
    )
    total = tl.sum(w, axis=1)
    out = tl.sum(parts * w[:, :, None], axis=1) / tl.where(total > 0, total, 1.0)[:, None]
    o_ptrs = out_ptr + seq * stride_os + heads[:, None] * stride_oh + offs_d[None, :] * stride_od
    o_mask = (offs_g < HEADS)[:, None] & (offs_d < head_dim)[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _paged_decode_reduce_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    num_heads,
    head_dim,
    stride_os,
    stride_oh,
    stride_od,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_wait_then_release(PDL)  # the partials are stage 1's output
    combine_splits_of_heads(
        part_out_ptr, part_lse_ptr, out_ptr, tl.program_id(0), tl.program_id(1), num_heads,
        head_dim, stride_os, stride_oh, stride_od, 1, NUM_SPLITS, 1, BLOCK_S, BLOCK_D,
    )  # fmt: skip


def reduce_splits(
    part_out: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor, pdl: bool
) -> None:
    """out [num_seqs, heads, head_dim] from part_out [num_seqs, heads, splits, BLOCK_D] and
    part_lse [num_seqs, heads, splits], a program a (seq, head)."""
    num_seqs, num_heads, num_splits, block_d = part_out.shape
    _paged_decode_reduce_kernel[(num_seqs, num_heads)](
        part_out,
        part_lse,
        out,
        num_heads,
        out.shape[-1],
        *out.stride(),
        NUM_SPLITS=num_splits,
        BLOCK_S=triton.next_power_of_2(num_splits),
        BLOCK_D=block_d,
        PDL=pdl,
        num_warps=4,
        **pdl_launch_options(pdl),
    )
