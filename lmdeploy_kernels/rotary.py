"""Rotary position embedding on q and k in one launch (rotate-half convention, as HF Llama).

`out = x * cos + rotate_half(x) * sin`, `rotate_half(x) = cat(-x[half:], x[:half])`, with
`cos`/`sin` tables `[max_positions, head_dim]` indexed by each token's position (or, with
`positions=None`, rows already gathered per token). q `[tokens, heads, dim]` and k
`[tokens, kv_heads, dim]` may be strided views (e.g. slices of a fused qkv output).

With `q_norm` / `k_norm` weights ([dim], Qwen3's q/k norm), each head is first RMS-normalized
over its dim and scaled by the weight, in the same pass: the normalized heads never go to memory.
With `kv_write`, the rotated key and the value also go to the token's slot of an unquantized
paged cache (kv_cache_write.py's contract): one launch fewer a layer.

Grid `(tokens,)`: each program loads its position's cos/sin row once and rotates every head of
q and of k. Bytes = 2 * tokens * (heads + kv_heads) * dim * e + tokens * dim * 8 (cos/sin,
fp32); FLOPs ~= 3 * tokens * (heads + kv_heads) * dim. Bandwidth-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import pdl_enabled, pdl_launch_options, pdl_wait_then_release


@triton.jit
def rotate_half(x1, x2, c1, c2, s1, s2):
    """(x1 c1 - x2 s1, x2 c2 + x1 s2), fp32, each with one explicit FMA: a contraction left to
    the compiler may round differently in another kernel, and the q/k/v GEMV's epilogue
    (qkv_rotary_gemv.py) must give these bits."""
    return tl.fma(x1, c1, -(x2 * s1)), tl.fma(x2, c2, x1 * s2)


@triton.jit
def _rotate_heads(x_ptr, out_ptr, row, num_heads, stride_t, stride_h, stride_ot, stride_oh,
                  offs_h, offs_d, half, c1, c2, s1, s2, norm_ptr, eps,
                  HAS_NORM: tl.constexpr):  # fmt: skip
    """Rotate all heads of one token: x1 = x[:half], x2 = x[half:] (unit stride on dim); with
    HAS_NORM, RMS-normalize each head and scale it by the weight at `norm_ptr` first."""
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < half)
    base = x_ptr + row * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + half, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        d_mask = offs_d < half
        w1 = tl.load(norm_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        w2 = tl.load(norm_ptr + half + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        mean_sq = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half)
        inv_rms = tl.rsqrt(mean_sq + eps)[:, None]
        x1 = x1 * inv_rms * w1[None, :]
        x2 = x2 * inv_rms * w2[None, :]
    out1, out2 = rotate_half(x1, x2, c1[None, :], c2[None, :], s1[None, :], s2[None, :])
    obase = out_ptr + row * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(obase, out1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(obase + half, out2.to(out_ptr.dtype.element_ty), mask=mask)
    return out1, out2, mask


@triton.jit
def _store_heads(ptr, slot, stride_slot, offs_h, offs_d, half, mask, x1, x2):
    """Both halves of every head of one token into cache row `slot` (heads at unit dim)."""
    base = ptr + slot * stride_slot + offs_h[:, None] * (2 * half) + offs_d[None, :]
    tl.store(base, x1.to(ptr.dtype.element_ty), mask=mask)
    tl.store(base + half, x2.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    cos_ptr,
    sin_ptr,
    positions_ptr,
    num_heads,
    num_kv_heads,
    half,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_cos,
    stride_sin,
    q_norm_ptr,
    k_norm_ptr,
    eps,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_vt,
    stride_vh,
    stride_cache_slot,
    HAS_POSITIONS: tl.constexpr,
    HAS_NORM: tl.constexpr,
    WRITE_KV: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    # Everything this kernel reads may be written in the step: q/k/v by the projection, and
    # positions or per-token cos/sin rows by the runner's gathers. So it waits first.
    pdl_wait_then_release(PDL)
    row = tl.program_id(0).to(tl.int64)
    if HAS_POSITIONS:
        pos = tl.load(positions_ptr + row).to(tl.int64)
    else:
        pos = row
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < half
    c1 = tl.load(cos_ptr + pos * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * stride_cos + half + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * stride_sin + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * stride_sin + half + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, row, num_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
                  tl.arange(0, BLOCK_HQ), offs_d, half, c1, c2, s1, s2, q_norm_ptr, eps,
                  HAS_NORM)  # fmt: skip
    offs_hk = tl.arange(0, BLOCK_HK)
    k1, k2, k_mask = _rotate_heads(k_ptr, k_out_ptr, row, num_kv_heads, stride_kt, stride_kh,
                                   stride_kot, stride_koh, offs_hk, offs_d, half, c1, c2, s1, s2,
                                   k_norm_ptr, eps, HAS_NORM)  # fmt: skip
    if WRITE_KV:  # the rotated key and the value into the token's cache slot (-1: padding)
        slot = tl.load(slot_ptr + row).to(tl.int64)
        if slot >= 0:
            _store_heads(k_cache_ptr, slot, stride_cache_slot, offs_hk, offs_d, half, k_mask,
                         k1, k2)  # fmt: skip
            v_base = v_ptr + row * stride_vt + offs_hk[:, None] * stride_vh + offs_d[None, :]
            v1 = tl.load(v_base, mask=k_mask, other=0.0)
            v2 = tl.load(v_base + half, mask=k_mask, other=0.0)
            _store_heads(v_cache_ptr, slot, stride_cache_slot, offs_hk, offs_d, half, k_mask,
                         v1, v2)  # fmt: skip


def _unit_dim(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    inplace: bool = False,
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    kv_write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [tokens, heads, dim]; k: [tokens, kv_heads, dim]; cos/sin: [max_positions, dim]
    (fp32 usually) indexed by `positions` [tokens], or [tokens, dim] when positions is None;
    `qk_norm`: (q weight [dim], k weight [dim], eps) to RMS-normalize each head before rotating;
    `kv_write`: (v [tokens, kv_heads, dim], k_cache, v_cache, slot_mapping [tokens]) to also
    write the rotated k and v into an unquantized paged cache [blocks, block_size, kv_heads,
    dim] at each token's slot (-1 skips), as kv_cache_write does.
    Returns rotated (q, k); with inplace=True they are q and k themselves."""
    num_tokens, num_heads, head_dim = q.shape
    assert k.dim() == 3 and k.shape[0] == num_tokens and k.shape[2] == head_dim, (
        f"k {tuple(k.shape)} must be [{num_tokens}, kv_heads, {head_dim}]"
    )
    assert head_dim % 2 == 0, f"head_dim {head_dim} must be even"
    assert cos.shape == sin.shape and cos.shape[-1] == head_dim, "cos/sin must be [*, head_dim]"
    if positions is None:
        assert cos.shape[0] == num_tokens, "without positions, cos/sin need one row per token"
    else:
        assert positions.shape == (num_tokens,), "positions must be [num_tokens]"
    if inplace:
        assert q.stride(-1) == 1 and k.stride(-1) == 1, "in place needs unit stride on dim"
    else:
        q, k = _unit_dim(q), _unit_dim(k)
    cos, sin = _unit_dim(cos), _unit_dim(sin)
    q_out = q if inplace else torch.empty_like(q, memory_format=torch.contiguous_format)
    k_out = k if inplace else torch.empty_like(k, memory_format=torch.contiguous_format)
    if num_tokens == 0:
        return q_out, k_out
    if qk_norm is not None:
        assert qk_norm[0].shape == (head_dim,) and qk_norm[1].shape == (head_dim,), (
            f"q/k norm weights must be [{head_dim}]"
        )
        q_norm, k_norm, eps = _unit_dim(qk_norm[0]), _unit_dim(qk_norm[1]), float(qk_norm[2])
    else:
        q_norm, k_norm, eps = cos, cos, 0.0  # unread
    if kv_write is not None:
        v, k_cache, v_cache, slots = kv_write
        assert v.shape == k.shape and v.stride(-1) == 1, "v must be k's shape, unit stride on dim"
        assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == k.shape[1:], (
            f"caches [blocks, block_size, kv_heads, dim] must end in {tuple(k.shape[1:])}"
        )
        assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches must be contiguous"
        assert slots.shape == (num_tokens,), "slot_mapping must be [num_tokens]"
        slot_stride = k_cache.stride(1)
    else:
        v, k_cache, v_cache, slots, slot_stride = k, k, k, cos, 0  # unread
    half = head_dim // 2
    pdl = pdl_enabled(q.device)
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        q_out,
        k_out,
        cos,
        sin,
        positions if positions is not None else cos,
        num_heads,
        k.shape[1],
        half,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        cos.stride(0),
        sin.stride(0),
        q_norm,
        k_norm,
        eps,
        v,
        k_cache,
        v_cache,
        slots,
        v.stride(0),
        v.stride(1),
        slot_stride,
        HAS_POSITIONS=positions is not None,
        HAS_NORM=qk_norm is not None,
        WRITE_KV=kv_write is not None,
        BLOCK_HQ=triton.next_power_of_2(num_heads),
        BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        BLOCK_D=triton.next_power_of_2(half),
        PDL=pdl,
        num_warps=4,
        **pdl_launch_options(pdl),
    )
    return q_out, k_out


def rotary_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, fp32 math, out of place."""
    if positions is not None:
        cos, sin = cos[positions.long()], sin[positions.long()]
    cos, sin = cos.float()[:, None, :], sin.float()[:, None, :]

    def rot(x: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        y = x.float()
        if norm is not None:
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + qk_norm[2]) * norm.float()
        half = x.shape[-1] // 2
        rotated = torch.cat([-y[..., half:], y[..., :half]], dim=-1)
        return (y * cos + rotated * sin).to(x.dtype)

    q_norm, k_norm = (qk_norm[0], qk_norm[1]) if qk_norm is not None else (None, None)
    return rot(q, q_norm), rot(k, k_norm)
