"""Each token's sum over its `k` expert outputs, the last step of the fused MoE.

The w2 grouped GEMM writes one row per (token, slot) pair, already scaled by its routing weight:
`down [T * k, H]`, pair `t * k + j`. `out[t] = sum_j down[t * k + j]`, summed in fp32 and rounded
once to the output dtype, as torch's `down.view(T, k, H).sum(1)` does.

Why a kernel of its own and not torch's reduction: at batch 1 its launch overlaps the next
layer's norm through programmatic dependent launch (`pdl.py`), where a torch op is a full
barrier; with the grouped GEMMs' PDL off (fused_moe.py), this measured Qwen3-30B-A3B 44.2% ->
49.5% of its batch-1 floor together with route+align's PDL. (Folding it into the w2 GEMM's
epilogue measured 10x slower; fp32 atomics into a zeroed output would need the zeroing and a
bf16 cast as launches of their own and lose run-to-run determinism: benchmark/NOTES.md.)

Grid `(T, cdiv(H, BLOCK_H))`: a program loads its token's `k` rows of `BLOCK_H` columns at once
(16 bytes a thread a row in bf16) and stores one row. Bytes: (k + 1) * T * H * e, mostly from
L2 at decode, where the GEMM has just written them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release

_BLOCK_H = 512  # with 2 warps: 8 columns a thread; not tuned on hardware


@triton.jit
def _moe_sum_kernel(
    x_ptr,
    out_ptr,
    H,
    stride_xp,
    stride_ot,
    TOP_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_j = tl.arange(0, BLOCK_J)
    h_mask = offs_h < H
    mask = (offs_j < TOP_K)[:, None] & h_mask[None, :]
    # The rows are the w2 GEMM's output: nothing to read before the wait.
    pdl_wait_then_release(PDL)
    rows = token * TOP_K + offs_j
    x = tl.load(x_ptr + rows[:, None] * stride_xp + offs_h[None, :], mask=mask, other=0.0)
    total = tl.sum(x.to(tl.float32), axis=0)
    tl.store(out_ptr + token * stride_ot + offs_h, total.to(out_ptr.dtype.element_ty), mask=h_mask)


def moe_token_sum(down: torch.Tensor, top_k: int) -> torch.Tensor:
    """down [T * k, H] (pair `t * k + j` in row `t * k + j`) -> [T, H] in down's dtype."""
    assert down.dim() == 2 and down.shape[0] % top_k == 0, "down must be [tokens * top_k, hidden]"
    assert down.stride(1) == 1, "down needs unit stride on the hidden dim"
    num_tokens, hidden = down.shape[0] // top_k, down.shape[1]
    out = torch.empty(num_tokens, hidden, dtype=down.dtype, device=down.device)
    if num_tokens == 0 or hidden == 0:
        return out
    block_h = min(_BLOCK_H, triton.next_power_of_2(hidden))
    pdl = pdl_enabled(down.device)
    _moe_sum_kernel[(num_tokens, triton.cdiv(hidden, block_h))](
        down,
        out,
        hidden,
        down.stride(0),
        out.stride(0),
        TOP_K=top_k,
        BLOCK_J=triton.next_power_of_2(top_k),
        BLOCK_H=block_h,
        PDL=pdl,
        num_warps=max(1, min(4, block_h // 256)),
        **pdl_launch_options(pdl),
    )
    return out


def moe_token_sum_ref(down: torch.Tensor, top_k: int) -> torch.Tensor:
    """The same in torch: fp32 accumulation, one rounding."""
    return down.view(-1, top_k, down.shape[1]).sum(dim=1)
