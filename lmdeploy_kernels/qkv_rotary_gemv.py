"""The q/k/v projection of a decode step with its rotary and K/V cache write in one launch:
`dense_gemv` over [x] @ W_qkv^T (+ bias), whose programs rotate what they computed and store it
where attention reads it: q into [tokens, heads, dim], k and v into their paged cache slots.

At batch 1 a layer's kernels are a chain of short launches, each waiting for the one before
(benchmark/NOTES.md); the rotary kernel between the projection and attention moved ~12 KB and
cost a link of that chain. Rotate-half pairs dim j with dim j + dim/2 of the same head, rows of
W that a [BLOCK_N]-row GEMV tile never holds together. So each program here takes its rows in
pairs, (j, j + dim/2) of one head for BLOCK_N/2 consecutive j, and rotates them in registers.
The value heads are taken in the same pairs and stored unrotated.

The projection's sums are rounded to the activations' dtype before rotating, as the GEMV
stores them for the rotary kernel to read back, and the rotation is rotary.py's own (explicit
FMAs), so with the same tiles the one launch gives the separate launches' bits.

Bytes and FLOPs are the GEMV's (`dense_gemv.py`) plus, per token, the cos/sin rows (fp32) and
the (heads + 2 kv_heads) x dim outputs written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dense_gemv import MAX_ROWS, gemv_row_pairs, rms_args
from .pdl import pdl_enabled, pdl_launch_options
from .rotary import rotate_half


@triton.jit
def _store_pair(row_ptr, j, HALF: tl.constexpr, x1, x2, mask):
    """Dims j and j + HALF of the head whose dim 0 each of `row_ptr` [BLOCK_M, 1] points at."""
    tl.store(row_ptr + j[None, :], x1.to(row_ptr.dtype.element_ty), mask=mask)
    tl.store(row_ptr + HALF + j[None, :], x2.to(row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qkv_rotary_gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    cos_ptr,
    sin_ptr,
    slot_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    M,
    K,
    num_heads,
    num_kv_heads,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_cos,
    stride_sin,
    stride_qm,
    stride_cache_slot,
    eps,
    HEAD_DIM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program i: the BLOCK_N / 2 rotate-half pairs starting at pair i * BLOCK_N / 2 of the
    [q heads; k heads; v heads] rows, all of one head (BLOCK_N / 2 divides dim / 2)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    PAIRS: tl.constexpr = BLOCK_N // 2
    pid = tl.program_id(0)
    head = pid * PAIRS // HALF
    j = pid * PAIRS % HALF + tl.arange(0, PAIRS)
    x1, x2 = gemv_row_pairs(
        x_ptr, w_ptr, bias_ptr, head * HEAD_DIM + j, HALF, M, K, stride_xm, stride_xk,
        stride_wn, stride_wk, eps, HAS_BIAS, EVEN_K, BLOCK_M, BLOCK_K, NORM, PDL,
    )  # fmt: skip
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    mask = m_mask[:, None] & (j < HALF)[None, :]
    if head < num_heads + num_kv_heads:  # a query or key head: rotated
        cos_row = cos_ptr + offs_m[:, None] * stride_cos + j[None, :]
        sin_row = sin_ptr + offs_m[:, None] * stride_sin + j[None, :]
        c1 = tl.load(cos_row, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_row + HALF, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_row, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_row + HALF, mask=mask, other=0.0).to(tl.float32)
        x1, x2 = rotate_half(x1, x2, c1, c2, s1, s2)
    if head < num_heads:
        q_row = q_ptr + offs_m[:, None] * stride_qm + head * HEAD_DIM
        _store_pair(q_row, j, HALF, x1, x2, mask)
    else:
        slot = tl.load(slot_ptr + offs_m, mask=m_mask, other=-1).to(tl.int64)
        keep = mask & (slot >= 0)[:, None]  # slot -1: a padding row of the graph's batch
        kv_head = head - num_heads
        if kv_head < num_kv_heads:
            k_row = k_cache_ptr + slot[:, None] * stride_cache_slot + kv_head * HEAD_DIM
            _store_pair(k_row, j, HALF, x1, x2, keep)
        else:
            kv_head -= num_kv_heads
            v_row = v_cache_ptr + slot[:, None] * stride_cache_slot + kv_head * HEAD_DIM
            _store_pair(v_row, j, HALF, x1, x2, keep)


def qkv_rotary_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    heads: tuple[int, int, int],
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    config: dict[str, int] | None = None,
    rms_eps: float | None = None,
) -> torch.Tensor:
    """x [tokens, K] (tokens <= `MAX_ROWS`) through W [(heads + 2 kv_heads) x dim, K] (+ bias),
    the q and k heads rotated with the token's cos/sin rows ([tokens, dim], rotate-half), k and v
    written to their slots of an unquantized paged cache [blocks, block_size, kv_heads, dim]
    (-1 skips a token). Returns q [tokens, heads, dim]. `config`: the GEMV's tiles (BLOCK_N,
    BLOCK_K, num_warps; `[4, 1024]`, 4 warps by default), without a K split. `rms_eps`: of
    x / rms(x), as `dense_gemv` takes it."""
    num_heads, num_kv_heads, head_dim = heads
    tokens, k = x.shape
    n = (num_heads + 2 * num_kv_heads) * head_dim
    cfg = dict(config or {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4})
    cfg.pop("SPLIT_K", None)
    block_n = cfg["BLOCK_N"]
    assert 0 < tokens <= MAX_ROWS, f"{tokens} tokens: the GEMV takes 1..{MAX_ROWS}"
    assert weight.shape == (n, k) and weight.stride(1) == 1, (
        f"weight {tuple(weight.shape)} is not [{n}, {k}] contiguous along K"
    )
    assert bias is None or bias.shape == (n,), f"bias {tuple(bias.shape)} is not [{n}]"
    assert head_dim % block_n == 0, f"BLOCK_N {block_n} must divide head_dim {head_dim} in pairs"
    assert cos.shape == sin.shape == (tokens, head_dim), "cos/sin must be [tokens, head_dim]"
    assert cos.stride(1) == 1 and sin.stride(1) == 1, "cos/sin must be contiguous along dim"
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (num_kv_heads, head_dim), (
        f"caches [blocks, block_size, kv_heads, dim] must end in {(num_kv_heads, head_dim)}"
    )
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches must be contiguous"
    assert k_cache.dtype == x.dtype, "an unquantized cache in the activations' dtype"
    assert slot_mapping.shape == (tokens,), "slot_mapping must be [tokens]"
    q = torch.empty(tokens, num_heads, head_dim, dtype=x.dtype, device=x.device)
    pdl = pdl_enabled(x.device)
    _qkv_rotary_gemv_kernel[(n // block_n,)](
        x, weight, bias if bias is not None else weight, cos, sin, slot_mapping, q,
        k_cache, v_cache, tokens, k, num_heads, num_kv_heads, *x.stride(), *weight.stride(),
        cos.stride(0), sin.stride(0), q.stride(0), k_cache.stride(1),
        **rms_args(rms_eps), HEAD_DIM=head_dim, HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0,
        BLOCK_M=triton.next_power_of_2(tokens), PDL=pdl, **cfg, **pdl_launch_options(pdl),
    )  # fmt: skip
    return q
