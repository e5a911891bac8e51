"""MoE routing and expert alignment in one launch, for decode-sized batches.

`route` (softmax, top-k, renormalize) then `moe_align` (pairs grouped by expert, padded to
`BLOCK_M`) are about 25 small torch launches a layer; at batch 1 a 48-layer MoE model spends
more time launching them than reading its experts. This kernel does both in one program:

1. For each chunk of tokens: softmax over the experts in fp32, then `k` rounds of argmax (the
   lowest expert id on a tie), each picked probability stored and its expert masked out;
   renormalized by the picked sum where asked. Expert counts accumulate in registers.
2. Blocks per expert `ceil(count / BLOCK_M)`, their cumulative ends; each M-block's expert is
   the number of experts whose blocks end at or before it; `sorted_ids` filled with padding.
3. For each chunk of pairs: a one-hot `[pairs, experts]` matrix, its running column cumsum
   gives each pair's rank within its expert (pair order, as the stable sort of `moe_align`),
   and the pair goes to `block_start[expert] * BLOCK_M + rank`.

One program on one SM: it loops over tokens and pairs, so its time grows with pairs x experts
while the torch path's stays flat; `fused_moe_routed` uses it up to `MAX_FUSED_WORK`. The
outputs equal `route` + `moe_align` exactly (ties aside: torch.topk's order among equal
probabilities is unspecified).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release

# pairs x next_power_of_2(experts) up to which the single program wins. Measured on an H200
# under CUDA graphs (benchmark/gpu_fused_moe.py): 128 experts, 8 a token: 0.014 ms against
# torch's 0.060 at 8 pairs, 0.071 against 0.091 at 512, 0.269 against 0.098 at 2048; 8
# experts, 2 a token: 0.039 against 0.094 at 1024 pairs.
MAX_FUSED_WORK = 64 * 1024


# num_tokens changes from step to step: specialising on it (== 1, divisible by 16) would
# compile a new variant in the middle of serving, ~1 s of stall the first time each shows up.
@triton.jit(do_not_specialize=["num_tokens"])
def _route_align_kernel(
    logits_ptr,
    weights_ptr,
    ids_ptr,
    sorted_ids_ptr,
    expert_ids_ptr,
    num_padded_ptr,
    num_tokens,
    num_experts,
    max_blocks,
    stride_lt,
    stride_le,
    TOP_K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    CHUNK_T: tl.constexpr,
    CHUNK_P: tl.constexpr,
    PDL: tl.constexpr,
):
    # Everything this kernel reads (the router's logits) is step data: nothing before the wait.
    pdl_wait_then_release(PDL)
    offs_e = tl.arange(0, BLOCK_E)
    e_mask = offs_e < num_experts
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)

    # 1. Route each chunk of tokens; count the pairs of each expert.
    for t0 in range(0, num_tokens, CHUNK_T):
        rows = t0 + tl.arange(0, CHUNK_T)
        r_mask = rows < num_tokens
        mask = r_mask[:, None] & e_mask[None, :]
        x = tl.load(
            logits_ptr + rows[:, None].to(tl.int64) * stride_lt + offs_e[None, :] * stride_le,
            mask=mask,
            other=float("-inf"),
        ).to(tl.float32)
        x = tl.where(r_mask[:, None], x, 0.0)  # rows past the end: finite, never stored
        p = tl.exp(x - tl.max(x, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]
        p = tl.where(e_mask[None, :], p, -2.0)  # padding experts rank below every real one
        picked = tl.zeros([CHUNK_T], dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            best = tl.max(p, axis=1)
            idx = tl.min(tl.where(p == best[:, None], offs_e[None, :], BLOCK_E), axis=1)
            tl.store(weights_ptr + rows * TOP_K + j, best, mask=r_mask)
            tl.store(ids_ptr + rows * TOP_K + j, idx, mask=r_mask)
            hit = (offs_e[None, :] == idx[:, None]) & r_mask[:, None]
            counts += tl.sum(hit.to(tl.int32), axis=0)
            picked += best
            p = tl.where(hit, -1.0, p)
        if RENORMALIZE:
            tl.debug_barrier()  # the weights just stored are read back by other threads
            for j in tl.static_range(TOP_K):
                w = tl.load(weights_ptr + rows * TOP_K + j, mask=r_mask, other=0.0)
                tl.store(weights_ptr + rows * TOP_K + j, w / picked, mask=r_mask)

    # 2. Blocks per expert, each block's expert, the padding.
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    block_ends = tl.cumsum(blocks, axis=0)
    block_starts = block_ends - blocks
    tl.store(num_padded_ptr, tl.sum(blocks, axis=0) * BLOCK_M)
    num_pairs = num_tokens * TOP_K
    for b0 in range(0, max_blocks, CHUNK_P):
        b = b0 + tl.arange(0, CHUNK_P)
        ended = (block_ends[None, :] <= b[:, None]) & e_mask[None, :]
        expert = tl.minimum(tl.sum(ended.to(tl.int32), axis=1), num_experts - 1)
        tl.store(expert_ids_ptr + b, expert, mask=b < max_blocks)
    for s0 in range(0, max_blocks * BLOCK_M, CHUNK_P * BLOCK_M):
        s = s0 + tl.arange(0, CHUNK_P * BLOCK_M)
        tl.store(sorted_ids_ptr + s, num_pairs, mask=s < max_blocks * BLOCK_M)
    tl.debug_barrier()  # the ids of step 1 and the padding land before step 3 reads/overwrites

    # 3. Each pair to its slot: its expert's first block, plus its rank among that expert's pairs.
    seen = tl.zeros([BLOCK_E], dtype=tl.int32)
    for q0 in range(0, num_pairs, CHUNK_P):
        pairs = q0 + tl.arange(0, CHUNK_P)
        q_mask = pairs < num_pairs
        expert = tl.load(ids_ptr + pairs, mask=q_mask, other=BLOCK_E)
        onehot = (expert[:, None] == offs_e[None, :]).to(tl.int32)
        upto = tl.cumsum(onehot, axis=0) + seen[None, :]
        rank = tl.sum(onehot * upto, axis=1) - 1
        start = tl.sum(onehot * block_starts[None, :], axis=1)
        tl.store(sorted_ids_ptr + start * BLOCK_M + rank, pairs, mask=q_mask)
        seen += tl.sum(onehot, axis=0)


def _launch_sizes(num_tokens: int, num_pairs: int, max_blocks: int, block_e: int) -> dict:
    """Chunks and warps by batch size. A decode step of a few tokens is all latency: each
    top-k round's max and min are reductions over the experts, which inside one warp are
    register shuffles but across 8 warps go through shared memory and barriers (15 us a
    layer at one token on an H200, 128 experts, top 8: twice the expert GEMM's time)."""
    if num_pairs <= 16:
        return dict(
            CHUNK_T=triton.next_power_of_2(num_tokens),
            CHUNK_P=triton.next_power_of_2(max(num_pairs, max_blocks)),
            num_warps=1,
        )
    return dict(
        CHUNK_T=max(1, min(16, 4096 // block_e)),
        CHUNK_P=max(1, min(64, 8192 // block_e)),
        num_warps=8,
    )


def max_aligned_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """The M-blocks `moe_align` may use: each expert's padding adds at most `block_m - 1` rows,
    and at most min(E, pairs) experts are used. A bound known on the host (no sync)."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m


def route_and_align(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """router_logits [T, E] -> (topk_weights [T, k] float32, topk_ids [T, k] int32,
    (sorted_ids, expert_ids, num_padded)): `route` then `moe_align`, in one launch."""
    assert router_logits.dim() == 2, "router_logits must be [tokens, experts]"
    num_tokens, num_experts = router_logits.shape
    assert 0 < top_k <= num_experts, f"top_k {top_k} must be in 1..num_experts ({num_experts})"
    device = router_logits.device
    num_pairs = num_tokens * top_k
    max_blocks = max_aligned_blocks(num_pairs, num_experts, block_m)
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=device)
    sorted_ids = torch.empty(max_blocks * block_m, dtype=torch.int32, device=device)
    expert_ids = torch.empty(max_blocks, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    block_e = triton.next_power_of_2(num_experts)
    pdl = pdl_enabled(device)
    _route_align_kernel[(1,)](
        router_logits,
        weights,
        ids,
        sorted_ids,
        expert_ids,
        num_padded,
        num_tokens,
        num_experts,
        max_blocks,
        *router_logits.stride(),
        TOP_K=top_k,
        RENORMALIZE=renormalize,
        BLOCK_M=block_m,
        BLOCK_E=block_e,
        PDL=pdl,
        **_launch_sizes(num_tokens, num_pairs, max_blocks, block_e),
        **pdl_launch_options(pdl),
    )
    return weights, ids, (sorted_ids, expert_ids, num_padded)
