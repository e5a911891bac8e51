"""Mixture-of-experts MLP (Mixtral, Qwen3-MoE): a grouped GEMM over the experts a batch routes to.

Each token picks `k` of `E` SwiGLU experts (`route`): w13 = gate/up stacked `[E, 2 * I, H]`, w2 =
down `[E, H, I]`, and `out[t] = sum_j w[t, j] * w2[e_j] @ silu_and_mul(w13[e_j] @ x[t])`.

`moe_align` sorts the `T * k` (token, slot) pairs by expert and pads each expert's segment to
`BLOCK_M` (vLLM's moe_align_block_size idea): `sorted_ids` holds pair ids (`t * k + j`, padding
= `T * k`), `expert_ids` the expert of each M-block, `num_padded` the used length. It runs on the
device without a host sync; the launch grid is a bound known on the host,
`(T * k + min(E, T * k) * (BLOCK_M - 1)) // BLOCK_M` M-blocks, and blocks past `num_padded`
return before reading anything, so an expert no token picked has no block and its weights are
never read (at decode the bound is exact: one block per expert picked).

Grid `(M-blocks, cdiv(N, BLOCK_N))`, M fastest so the blocks of one expert run together and
share its weight tile through L2. A program gathers its `BLOCK_M` rows (`A[pair // k]` for w13,
`A[pair]` for w2), multiplies by `BLOCK_N` columns of its expert's weight, optionally scales
each row by its routing weight, and scatters to `C[pair]`. `fused_moe` calls it for w13 with
the SwiGLU fused (gate and up columns in one program), then for w2 with the routing weights,
then sums each token's `k` rows. `fused_moe_routed` starts from the router's logits
and, at decode sizes, routes and aligns in one launch (`moe_routing.py`).

Cost, for T tokens, U experts picked by at least one token, e bytes an element:
bytes ~= U * 3 * H * I * e (each picked expert's weights once; the bandwidth floor at decode)
+ 2 * T * H * e (x, out) + T * k * (2 * I + 2 * H) * e (the activation and the per-slot
outputs, each written and read once); FLOPs = 6 * T * k * H * I (the SwiGLU's three products)
plus the padding rows' share, up to `BLOCK_M - 1` rows an expert. Decode is bandwidth-bound (target bytes / ~4.8 TB/s
on the H200); long prefills are compute-bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .moe_routing import MAX_FUSED_WORK, max_aligned_blocks, route_and_align
from .moe_sum import moe_token_sum
from .pdl import pdl_enabled, pdl_launch_options, pdl_wait, pdl_wait_then_release
from .w4a16_gemm import NUM_SMS

DEEP_K = 4096  # a decode-sized product over at least this many takes _moe_config's deep tiles
SHARED_MEMORY_PER_SM = 228 << 10  # Hopper's, the bound on resident programs of the PDL rule


def route(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the experts, top-k, and (Mixtral always, Qwen3-MoE with `norm_topk_prob`)
    the picked weights rescaled to sum to 1. router_logits: [T, E] -> (topk_weights [T, k]
    float32, topk_ids [T, k] int64)."""
    assert router_logits.dim() == 2, "router_logits must be [tokens, experts]"
    assert 0 < top_k <= router_logits.shape[1], f"top_k {top_k} must be in 1..num_experts"
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    topk_weights, topk_ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    return topk_weights, topk_ids


def moe_align(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids [max_blocks * block_m] int32, expert_ids [max_blocks] int32, num_padded [1]
    int32): pair ids grouped by expert, each group padded to `block_m` with `T * k`. Only
    device ops whose output sizes are known on the host (scatter_add, cumsum, a stable sort,
    searchsorted): no host sync."""
    num_pairs = topk_ids.numel()
    device = topk_ids.device
    max_blocks = max_aligned_blocks(num_pairs, num_experts, block_m)
    flat = topk_ids.reshape(-1).long()
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would sync for its length
    blocks = (counts + block_m - 1) // block_m
    block_ends = blocks.cumsum(0)
    order = torch.sort(flat, stable=True).indices  # pair ids, by expert, in token order
    experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - (counts.cumsum(0) - counts)[experts]
    dest = (block_ends - blocks)[experts] * block_m + rank
    sorted_ids = torch.full((max_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_idx = torch.arange(max_blocks, device=device)
    expert_ids = torch.searchsorted(block_ends, block_idx, right=True)
    expert_ids = expert_ids.clamp_(max=num_experts - 1).to(torch.int32)  # past the end: unread
    num_padded = (block_ends[-1:] * block_m).to(torch.int32)
    return sorted_ids, expert_ids, num_padded


def _moe_config(num_pairs: int, num_experts: int, dtype: torch.dtype, k: int = 0) -> dict:
    """Tiles by the rows an expert gets on average, for a product over `k` (its reduction
    length). Up to 16 (decode, small batches) the kernel streams the weights: 16-row blocks
    (one an expert, mostly), wide K tiles, deep pipelining; taller blocks would only add padding
    rows. A deep reduction (k >= DEEP_K: Mixtral's w13 and w2) takes narrower, deeper tiles: on
    an H200 at one token 111.6 + 57.2 us against 120.7 + 58.5 (no gain on Qwen3-MoE's shallower
    products, benchmark/results/gpu_moe_tiles_s9.json). Past 16 rows (prefill) each weight tile
    serves many rows: 64-row blocks, wider N. fp32 tiles keep to fit shared memory. BLOCK_M
    does not depend on k: both products share one alignment."""
    half = dtype.itemsize == 2
    if num_pairs <= 16 * num_experts:
        if half and k >= DEEP_K:
            return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=3)
        cfg = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128 if half else 64, num_warps=4)
        return cfg | dict(num_stages=4 if half else 2)
    cfg = dict(BLOCK_M=64, BLOCK_N=128 if half else 64, BLOCK_K=64 if half else 32, num_warps=8)
    return cfg | dict(num_stages=3 if half else 2)


# num_pairs changes from step to step: specialising on it (== 1, divisible by 16) would
# compile a new variant in the middle of serving, ~1 s of stall the first time each shows up.
@triton.jit(do_not_specialize=["num_pairs"])
def _fused_moe_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    topk_weights_ptr,
    sorted_ids_ptr,
    expert_ids_ptr,
    num_padded_ptr,
    N,
    K,
    num_pairs,
    stride_am,
    stride_ak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    A_ROWS_PER_PAIR: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    SWIGLU: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    PDL: tl.constexpr,
    RELEASE_EARLY: tl.constexpr,
    PREFETCH_B: tl.constexpr,
):
    """C[pair] = A[pair // A_ROWS_PER_PAIR] @ B[expert].T (* routing weight of pair). With
    SWIGLU, B holds 2 * N rows (gate, then up) and C[pair] = silu(A @ gate.T) * (A @ up.T):
    each program multiplies the same columns of both halves, so the activation never leaves
    registers.

    PDL: the alignment (sorted_ids, expert_ids, num_padded) is read before the wait only with
    PREFETCH_B, where the launch follows the w13 product of the same alignment: that kernel
    releases its dependents only after its own wait, so the routing kernel that wrote the
    alignment has completed. PREFETCH_B then also loads the first weight tile before the wait.
    RELEASE_EARLY: the dependents launch right after the wait (a grid of one wave), else at
    this grid's exit."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if not PREFETCH_B:
        _wait(PDL, RELEASE_EARLY)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)
    m_mask = pairs < num_pairs
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (pairs // A_ROWS_PER_PAIR)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = (
        b_ptr
        + expert * stride_be
        + offs_n[None, :].to(tl.int64) * stride_bn
        + offs_k[:, None] * stride_bk
    )
    up_ptrs = b_ptrs + N * stride_bn  # read only with SWIGLU
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH_B:  # the first K tile, its weights loaded before the wait (not with SWIGLU)
        b = tl.load(b_ptrs, mask=(offs_k < K)[:, None] & n_mask[None, :], other=0.0)
        _wait(PDL, RELEASE_EARLY)
        a = tl.load(a_ptrs, mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
        if DOT_IN_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    for k0 in range(BLOCK_K if PREFETCH_B else 0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_IN_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if SWIGLU:
            up = tl.load(up_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            if DOT_IN_FP32:
                up = up.to(tl.float32)
            acc_up = tl.dot(a, up, acc_up, input_precision=DOT_PRECISION)
            up_ptrs += BLOCK_K * stride_bk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if SWIGLU:
        # rounded to the output dtype first, as an unfused GEMM then silu_and_mul would be
        gate = acc.to(c_ptr.dtype.element_ty).to(tl.float32)
        acc = gate * tl.sigmoid(gate) * acc_up.to(c_ptr.dtype.element_ty).to(tl.float32)
    if MUL_ROUTED_WEIGHT:
        w = tl.load(topk_weights_ptr + pairs, mask=m_mask, other=0.0)
        acc = acc * w[:, None]
    c_ptrs = c_ptr + pairs[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _wait(PDL: tl.constexpr, RELEASE_EARLY: tl.constexpr):
    if RELEASE_EARLY:
        pdl_wait_then_release(PDL)
    else:
        pdl_wait(PDL)


def _grouped_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    align: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    topk_weights: torch.Tensor | None,
    a_rows_per_pair: int,
    cfg: dict,
    swiglu: bool = False,
    follows_w13: bool = False,
) -> None:
    """`follows_w13`: launched right after the w13 product over the same `align` (the w2
    product), so its first weight tile may load before the PDL wait."""
    sorted_ids, expert_ids, num_padded = align
    n, k = out.shape[1], b.shape[2]  # with swiglu, b holds 2 * n rows
    grid = (expert_ids.shape[0], triton.cdiv(n, cfg["BLOCK_N"]))
    # A grid of several waves releases its dependents only at its exit: released early, their
    # waiting programs took the slots its later waves needed (with early release Mixtral-8x7B's
    # w13, 448 programs, cost it 85.5 -> 78.8% of its batch-1 floor on an H200; NOTES.md s8).
    tile_elems = cfg["BLOCK_M"] * cfg["BLOCK_K"] + (1 + swiglu) * cfg["BLOCK_K"] * cfg["BLOCK_N"]
    per_sm = max(1, SHARED_MEMORY_PER_SM // (cfg["num_stages"] * tile_elems * b.element_size()))
    pdl = pdl_enabled(a.device)
    _fused_moe_kernel[grid](
        a,
        b,
        out,
        topk_weights if topk_weights is not None else out,  # unread without MUL_ROUTED_WEIGHT
        sorted_ids,
        expert_ids,
        num_padded,
        n,
        k,
        out.shape[0],
        *a.stride(),
        *b.stride(),
        *out.stride(),
        A_ROWS_PER_PAIR=a_rows_per_pair,
        MUL_ROUTED_WEIGHT=topk_weights is not None,
        SWIGLU=swiglu,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        # Triton's interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584,
        # "not supported yet"); exact in fp32, so the GPU's bf16 products, fp32 sums, are kept.
        DOT_IN_FP32=isinstance(_fused_moe_kernel, InterpretedFunction),
        PDL=pdl,
        RELEASE_EARLY=grid[0] * grid[1] <= per_sm * NUM_SMS,
        PREFETCH_B=follows_w13 and not swiglu,
        **cfg,
        **pdl_launch_options(pdl),
    )


def _check(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> None:
    assert hidden.dim() == 2, f"hidden must be [tokens, hidden], got {tuple(hidden.shape)}"
    assert w13.dim() == 3 and w2.dim() == 3, "w13 must be [E, 2 * I, H] and w2 [E, H, I]"
    num_experts, two_i, h = w13.shape
    assert h == hidden.shape[1], f"w13's last dim {h} != hidden size {hidden.shape[1]}"
    assert two_i % 2 == 0, f"w13's dim 1 ({two_i}) must stack gate and up: 2 * intermediate"
    assert w2.shape == (num_experts, h, two_i // 2), f"w2 must be {(num_experts, h, two_i // 2)}"
    assert hidden.dtype == w13.dtype == w2.dtype, "hidden, w13 and w2 must share a dtype"
    assert topk_ids.shape == topk_weights.shape and topk_ids.dim() == 2, "topk_* must be [T, k]"
    assert topk_ids.shape[0] == hidden.shape[0], "topk_ids needs one row a token"
    assert not topk_ids.is_floating_point(), "topk_ids must be an integer tensor (route() output)"
    assert topk_weights.is_floating_point(), "topk_weights must be floating point"
    assert hidden.stride(1) == 1, "hidden needs unit stride on the hidden dim: pass .contiguous()"
    assert w13.stride(2) == 1 and w2.stride(2) == 1, "weights need unit stride on their last dim"
    assert topk_weights.is_contiguous() and topk_ids.is_contiguous(), (
        "topk_weights and topk_ids are read by pair id: pass .contiguous()"
    )
    devices = {t.device for t in (hidden, w13, w2, topk_weights, topk_ids)}
    assert len(devices) == 1, f"all inputs must be on one device, got {devices}"


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """hidden [T, H]; w13 [E, 2 * I, H] (gate rows then up rows); w2 [E, H, I]; topk_weights
    and topk_ids [T, k] (ids in 0..E-1, unchecked: that would sync). Returns [T, H] in
    hidden's dtype."""
    _check(hidden, w13, w2, topk_weights, topk_ids)
    if _nothing_to_do(hidden, w13, topk_ids.shape[1]):
        return torch.zeros_like(hidden)
    block_m = _moe_config(topk_ids.numel(), w13.shape[0], hidden.dtype)["BLOCK_M"]
    align = moe_align(topk_ids, w13.shape[0], block_m)
    return _experts(hidden, w13, w2, topk_weights.float(), topk_ids, align)


def fused_moe_routed(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> torch.Tensor:
    """`route` then `fused_moe`, from the router's logits [T, E]:
    decode-sized batches route and align in one launch (`moe_routing`), larger ones in torch
    ops."""
    num_experts = w13.shape[0]
    assert router_logits.shape == (hidden.shape[0], num_experts), (
        f"router_logits must be [tokens, experts] = {(hidden.shape[0], num_experts)}"
    )
    if _nothing_to_do(hidden, w13, top_k):
        return torch.zeros_like(hidden)
    num_pairs = hidden.shape[0] * top_k
    block_m = _moe_config(num_pairs, num_experts, hidden.dtype)["BLOCK_M"]
    if num_pairs * triton.next_power_of_2(num_experts) <= MAX_FUSED_WORK:
        weights, ids, align = route_and_align(router_logits, top_k, renormalize, block_m)
    else:
        weights, ids = route(router_logits, top_k, renormalize)
        align = moe_align(ids, num_experts, block_m)
    _check(hidden, w13, w2, weights, ids)
    return _experts(hidden, w13, w2, weights, ids, align)


def _nothing_to_do(hidden: torch.Tensor, w13: torch.Tensor, top_k: int) -> bool:
    return hidden.shape[0] == 0 or top_k == 0 or w13.shape[1] == 0


def _experts(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    align: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The w13 grouped GEMM (SwiGLU fused), then the w2 grouped GEMM, then each token's sum over
    its k rows (`moe_sum`: a Triton kernel, so the chain's programmatic dependent launch
    continues through it to the next layer's norm). One launch for w2 and the sum measured 10x
    slower on the H200 (benchmark/NOTES.md)."""
    num_tokens, top_k = topk_ids.shape
    num_pairs = num_tokens * top_k
    inter, h = w2.shape[2], w2.shape[1]
    num_experts, dtype = w13.shape[0], hidden.dtype
    act = torch.empty(num_pairs, inter, dtype=dtype, device=hidden.device)
    cfg13 = _moe_config(num_pairs, num_experts, dtype, k=h)
    _grouped_gemm(hidden, w13, act, align, None, top_k, cfg13, swiglu=True)
    down = torch.empty(num_pairs, h, dtype=dtype, device=hidden.device)
    cfg2 = _moe_config(num_pairs, num_experts, dtype, k=inter)
    _grouped_gemm(act, w2, down, align, topk_weights, 1, cfg2, follows_w13=True)
    return moe_token_sum(down, top_k)


def fused_moe_ref(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Plain torch, expert by expert over the tokens that picked it, fp32 math."""
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for e in range(w13.shape[0]):
        tokens, slots = torch.nonzero(topk_ids == e, as_tuple=True)
        if tokens.numel() == 0:
            continue
        gate, up = (hidden[tokens].float() @ w13[e].float().T).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ w2[e].float().T
        out.index_add_(0, tokens, y * topk_weights[tokens, slots, None].float())
    return out.to(hidden.dtype)
