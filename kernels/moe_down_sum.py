"""The MoE down projection and each token's sum over its experts in one launch, for decode.

At large batches `fused_moe` multiplies w2 as a grouped GEMM that writes one row a (token,
slot) pair, then sums each token's `k` rows in torch: two launches. At one token on an H200
(Qwen3-30B-A3B, 128 experts, 8 a token, H 2048, I 768) the sum alone costs 4.6 us a layer,
and the grouped GEMM's K loop (I = 768, six 128-wide steps) is too short for its 4-stage
pipeline to fill: 11.9 us for 25 MB, about half of HBM's rate.

Here a program owns one token and `BLOCK_N` output columns and computes
`out[t, n] = sum_j w[t, j] * (act[t * k + j] @ w2[e_j][n]^T)` whole. Its loop runs over the
token's k pairs times I as one long K axis (6144 at Qwen3's shape): each step loads a
`[BLOCK_P, BLOCK_N, BLOCK_K]` tile (the rows of `BLOCK_P` pairs' experts at once, so that
enough bytes are in flight with only one or two programs an SM), loads the next step's before
it multiplies this one, and adds the products into an fp32 accumulator of shape
`[BLOCK_N, BLOCK_K]` (the routing weight folded into the activation; one FFMA a weight on
CUDA cores: at one token M = 1, a GEMV, no tensor-core shape). Threads reduce once, at the
end, and one program writes each output: no atomics, deterministic, in the hidden's dtype.

Bytes: T * k * H * I * e (each pair reads its expert's [H, I]: at one token exactly the
grouped GEMM's bytes, as a token's k experts are distinct; an expert two tokens share is read
twice, from L2 when their programs overlap, which the token-fastest grid favours) + T * k * I
* e (act) + T * H * e (out). FLOPs 2 * T * k * H * I. `down_sum_fits` bounds the batches it
takes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pairs (tokens x k) up to which decode batches take this path; past that the grouped GEMM's
# 16-row blocks start to fill and each expert's tile serves several pairs.
MAX_DOWN_SUM_PAIRS = 64


def down_sum_fits(num_tokens: int, top_k: int, num_experts: int) -> bool:
    """Whether `moe_down_sum` reads about what the grouped GEMM reads, by counting. One token's
    k experts are distinct: the same bytes, always. Beyond one token, pairs P = T * k spread
    over E experts: under uniform routing about P * (P - k) / (2E) of them re-read an expert
    another pair read (from HBM at worst), so P <= E / 4 keeps that under 1/8 of the w2 bytes
    and below the token sum it saves (4.6 us a layer at one token). Qwen3-30B-A3B (E 128, k 8):
    up to 4 tokens, where 2.9 of 32 pairs re-read, ~2 us over 21.5; Mixtral (E 8, k 2): one
    token only. The cap keeps it to decode batches."""
    num_pairs = num_tokens * top_k
    return num_tokens == 1 or num_pairs <= min(MAX_DOWN_SUM_PAIRS, num_experts // 4)


def down_sum_config(top_k: int, inter: int, dtype: torch.dtype) -> dict:
    """Tiles: 16 bytes a thread along I (a 256-wide bf16 row segment is one warp's load), 8
    output columns, up to 4 pairs a step. At Qwen3's shape and one token: 256 programs (about
    two an SM), each step 16 KiB (the next one in flight while this one is multiplied)."""
    block_k = min(512 // dtype.itemsize, triton.next_power_of_2(inter))
    block_p = min(4, triton.next_power_of_2(top_k))
    return dict(BLOCK_P=block_p, BLOCK_N=8, BLOCK_K=block_k, num_warps=4)


@triton.jit
def _load_step(
    act_ptr,
    w2_ptr,
    topk_weights_ptr,
    topk_ids_ptr,
    token,
    step,
    num_steps,
    k_tiles,
    rows,
    K,
    stride_am,
    stride_ak,
    stride_we,
    stride_wn,
    stride_wk,
    TOP_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Step `step` of the (pair group, K tile) loop: the w2 rows of its pairs' experts
    [BLOCK_P, BLOCK_N, BLOCK_K] and their activations times the routing weights [BLOCK_P,
    BLOCK_K] in fp32. Past the last step, or past the token's k pairs, nothing is read."""
    slots = (step // k_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = (step % k_tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
    # A tensor, not a scalar, on the right: the interpreter takes no scalar in a mask.
    p_mask = (slots < TOP_K) & (tl.full([BLOCK_P], step, tl.int32) < num_steps)
    pairs = token * TOP_K + slots
    expert = tl.load(topk_ids_ptr + pairs, mask=p_mask, other=0).to(tl.int64)
    weight = tl.load(topk_weights_ptr + pairs, mask=p_mask, other=0.0).to(tl.float32)
    x_ptrs = act_ptr + pairs[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = (
        w2_ptr
        + expert[:, None, None] * stride_we
        + rows[None, :, None] * stride_wn
        + offs_k[None, None, :] * stride_wk
    )
    if EVEN_K:
        x = tl.load(x_ptrs, mask=p_mask[:, None], other=0.0)
        w = tl.load(w_ptrs, mask=p_mask[:, None, None], other=0.0)
    else:
        k_mask = offs_k < K
        x = tl.load(x_ptrs, mask=p_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=p_mask[:, None, None] & k_mask[None, None, :], other=0.0)
    return w, x.to(tl.float32) * weight[:, None]


@triton.jit
def _moe_down_sum_kernel(
    act_ptr,
    w2_ptr,
    topk_weights_ptr,
    topk_ids_ptr,
    out_ptr,
    N,
    K,
    stride_am,
    stride_ak,
    stride_we,
    stride_wn,
    stride_wk,
    stride_ot,
    stride_on,
    TOP_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (token, column tile). Rows of w2 past N read row N - 1 (wrapped, not masked: the
    loads stay 16 bytes wide) and are never stored."""
    token = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_steps = tl.cdiv(TOP_K, BLOCK_P) * k_tiles
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    w_next, x_next = _load_step(
        act_ptr, w2_ptr, topk_weights_ptr, topk_ids_ptr, token, 0, num_steps, k_tiles, rows, K,
        stride_am, stride_ak, stride_we, stride_wn, stride_wk, TOP_K, EVEN_K, BLOCK_P, BLOCK_K,
    )  # fmt: skip
    for step in range(num_steps):
        w, x = w_next, x_next
        # The next step's tile is in flight while this one is multiplied.
        w_next, x_next = _load_step(
            act_ptr, w2_ptr, topk_weights_ptr, topk_ids_ptr, token, step + 1, num_steps,
            k_tiles, rows, K, stride_am, stride_ak, stride_we, stride_wn, stride_wk, TOP_K,
            EVEN_K, BLOCK_P, BLOCK_K,
        )  # fmt: skip
        acc += tl.sum(x[:, None, :] * w.to(tl.float32), axis=0)
    out = tl.sum(acc, axis=1)
    out_ptrs = out_ptr + token * stride_ot + offs_n * stride_on
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def moe_down_sum(
    act: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    config: dict | None = None,
) -> torch.Tensor:
    """act [T * k, I] (pair t * k + j: token t's j-th expert's SwiGLU activation); w2 [E, H, I];
    topk_weights and topk_ids [T, k], contiguous (ids unchecked: that would sync). Returns
    out [T, H] in act's dtype: sum_j topk_weights[t, j] * act[t * k + j] @ w2[topk_ids[t, j]]^T.
    `config` forces the tiles (benchmarks)."""
    num_tokens, top_k = topk_ids.shape
    _, hidden, inter = w2.shape
    assert topk_weights.shape == topk_ids.shape, "topk_weights and topk_ids must both be [T, k]"
    want = (num_tokens * top_k, inter)
    assert act.shape == want, f"act must be [T * k, I] = {want}, got {tuple(act.shape)}"
    assert act.dtype == w2.dtype, "act and w2 must share a dtype"
    assert topk_ids.is_contiguous() and topk_weights.is_contiguous(), (
        "topk_ids and topk_weights are read by pair id (t * k + j): pass .contiguous()"
    )
    out = torch.empty(num_tokens, hidden, dtype=act.dtype, device=act.device)
    if out.numel() == 0:
        return out
    cfg = dict(config or down_sum_config(top_k, inter, act.dtype))
    # Tokens fastest: the programs of one column tile run together, so an expert that several
    # tokens picked is read from L2 after the first.
    grid = (num_tokens, triton.cdiv(hidden, cfg["BLOCK_N"]))
    _moe_down_sum_kernel[grid](
        act, w2, topk_weights, topk_ids, out, hidden, inter, *act.stride(), *w2.stride(),
        *out.stride(), TOP_K=top_k, EVEN_K=inter % cfg["BLOCK_K"] == 0, **cfg,
    )  # fmt: skip
    return out


def moe_down_sum_ref(
    act: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
) -> torch.Tensor:
    """Plain torch, fp32 math: each pair's row through its expert, weighted, summed a token."""
    num_tokens, top_k = topk_ids.shape
    rows = torch.einsum("pi,phi->ph", act.float(), w2[topk_ids.reshape(-1).long()].float())
    rows = rows * topk_weights.reshape(-1, 1).float()
    return rows.view(num_tokens, top_k, -1).sum(dim=1).to(act.dtype)
