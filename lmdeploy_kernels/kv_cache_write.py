"""Write the step's new keys and values into the paged KV cache.

k, v: `[num_tokens, kv_heads, head_dim]`; caches `[num_blocks, block_size, kv_heads, head_dim]`;
token `t` goes to flat slot `slot_mapping[t] = block * block_size + offset`, and slot -1 (a
padding token) is skipped. Grid `(num_tokens,)`: each program copies its token's
`[kv_heads, head_dim]` tile of k and of v (one contiguous run each in the usual layout).

Bytes = 4 * num_tokens * kv_heads * head_dim * e (k, v read; two cache rows written) plus
8 bytes of slot per token; no FLOPs. Bandwidth-bound: target bytes / ~3 TB/s on the H100.

With `quant_bits` 8 or 4 (`quant_policy`, the format of kv_quant.py) each token's head is
quantized on the way in: min/max over its dims (for int4 the best of seven shrinks of that
range, as kv_quant.py's reference picks it), then uint8 values (two nibbles a byte for int4)
and its (scale, zero) pair in the scale_zero tensors. The cache rows written shrink to
head_dim * bits / 8 bytes plus the pair.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kv_quant import check_bits, packed_dim, quantize_kv_ref


@triton.jit
def _quantize(x, scale, zero, QMAX: tl.constexpr):
    q = tl.floor(x / scale[:, None] + zero[:, None] + 0.5)
    return tl.minimum(tl.maximum(q, 0.0), QMAX).to(tl.uint8)


@triton.jit
def _range_scales(lo, hi, QMAX: tl.constexpr, SZ_DTYPE: tl.constexpr):
    """(scale, zero) of the per-row range [lo, hi], rounded to the stored dtype first, as
    quantize_kv_ref does."""
    scale = (hi - lo) / QMAX
    scale = tl.where(scale > 0, scale, 1.0).to(SZ_DTYPE).to(tl.float32)
    zero = (-lo / scale).to(SZ_DTYPE).to(tl.float32)
    return scale, zero


@triton.jit
def _sq_error(x_lo, x_hi, mask, scale, zero, QMAX: tl.constexpr):
    """Per-row squared error of the halves read back through (scale, zero)."""
    d_lo = (_quantize(x_lo, scale, zero, QMAX).to(tl.float32) - zero[:, None]) * scale[:, None]
    d_hi = (_quantize(x_hi, scale, zero, QMAX).to(tl.float32) - zero[:, None]) * scale[:, None]
    e_lo = tl.where(mask, (d_lo - x_lo) * (d_lo - x_lo), 0.0)
    e_hi = tl.where(mask, (d_hi - x_hi) * (d_hi - x_hi), 0.0)
    return tl.sum(e_lo, 1) + tl.sum(e_hi, 1)


@triton.jit
def _quant_scales(x_lo, x_hi, mask, QMAX: tl.constexpr, SZ_DTYPE: tl.constexpr):
    """Per-row (scale, zero) of the halves x_lo, x_hi [BLOCK_H, BLOCK_HALF]: their min/max, and
    for int4 the shrink of that range that reads back closest (kv_quant.int4_range_shrinks:
    1 - 0.05 i, i = 0..6, around the midpoint)."""
    lo = tl.minimum(
        tl.min(tl.where(mask, x_lo, float("inf")), 1), tl.min(tl.where(mask, x_hi, float("inf")), 1)
    )
    hi = tl.maximum(
        tl.max(tl.where(mask, x_lo, float("-inf")), 1),
        tl.max(tl.where(mask, x_hi, float("-inf")), 1),
    )
    lo = tl.where(lo <= hi, lo, 0.0)  # padding rows (no dims): a range of 0, not inf - inf
    hi = tl.maximum(hi, lo)
    scale, zero = _range_scales(lo, hi, QMAX, SZ_DTYPE)
    if QMAX == 15:
        mid = (lo + hi) / 2
        err = _sq_error(x_lo, x_hi, mask, scale, zero, QMAX)
        for i in tl.static_range(1, 7):
            shrink = 1.0 - 0.05 * i
            s, z = _range_scales(
                mid + (lo - mid) * shrink, mid + (hi - mid) * shrink, QMAX, SZ_DTYPE
            )
            e = _sq_error(x_lo, x_hi, mask, s, z, QMAX)
            better = e < err
            scale = tl.where(better, s, scale)
            zero = tl.where(better, z, zero)
            err = tl.where(better, e, err)
    return scale, zero


@triton.jit
def _write_quantized(
    x_ptr,
    cache_ptr,
    sz_ptr,
    token,
    block,
    offset,
    kv_heads,
    half,
    stride_xt,
    stride_xh,
    stride_xd,
    stride_cb,
    stride_ct,
    stride_ch,
    stride_cd,
    stride_sb,
    stride_st,
    stride_sh,
    stride_sd,
    QUANT_BITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """One token's [kv_heads, head_dim] of x into a quantized cache row, as two halves of the
    head (int4 packs dim j with dim j + half; int8 writes them side by side)."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_j = tl.arange(0, BLOCK_HALF)
    h_mask = offs_h < kv_heads
    mask = h_mask[:, None] & (offs_j[None, :] < half)
    x_row = x_ptr + token * stride_xt + offs_h[:, None] * stride_xh
    x_lo = tl.load(x_row + offs_j[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x_hi = tl.load(x_row + (offs_j[None, :] + half) * stride_xd, mask=mask, other=0.0)
    x_hi = x_hi.to(tl.float32)
    QMAX: tl.constexpr = 2**QUANT_BITS - 1
    scale, zero = _quant_scales(x_lo, x_hi, mask, QMAX, sz_ptr.dtype.element_ty)
    q_lo = _quantize(x_lo, scale, zero, QMAX)
    q_hi = _quantize(x_hi, scale, zero, QMAX)
    c_row = cache_ptr + block * stride_cb + offset * stride_ct + offs_h[:, None] * stride_ch
    if QUANT_BITS == 4:
        tl.store(c_row + offs_j[None, :] * stride_cd, q_lo | (q_hi << 4), mask=mask)
    else:
        tl.store(c_row + offs_j[None, :] * stride_cd, q_lo, mask=mask)
        tl.store(c_row + (offs_j[None, :] + half) * stride_cd, q_hi, mask=mask)
    s_row = sz_ptr + block * stride_sb + offset * stride_st + offs_h * stride_sh
    tl.store(s_row, scale.to(sz_ptr.dtype.element_ty), mask=h_mask)
    tl.store(s_row + stride_sd, zero.to(sz_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _kv_cache_write_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_sz_ptr,
    v_sz_ptr,
    kv_heads,
    head_dim,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_kcb,
    stride_kct,
    stride_kch,
    stride_kcd,
    stride_vcb,
    stride_vct,
    stride_vch,
    stride_vcd,
    stride_ksb,
    stride_kst,
    stride_ksh,
    stride_ksd,
    stride_vsb,
    stride_vst,
    stride_vsh,
    stride_vsd,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    if QUANT_BITS != 0:
        half = head_dim // 2
        _write_quantized(
            k_ptr, k_cache_ptr, k_sz_ptr, token, block, offset, kv_heads, half,
            stride_kt, stride_kh, stride_kd, stride_kcb, stride_kct, stride_kch, stride_kcd,
            stride_ksb, stride_kst, stride_ksh, stride_ksd, QUANT_BITS, BLOCK_H, BLOCK_D // 2,
        )  # fmt: skip
        _write_quantized(
            v_ptr, v_cache_ptr, v_sz_ptr, token, block, offset, kv_heads, half,
            stride_vt, stride_vh, stride_vd, stride_vcb, stride_vct, stride_vch, stride_vcd,
            stride_vsb, stride_vst, stride_vsh, stride_vsd, QUANT_BITS, BLOCK_H, BLOCK_D // 2,
        )  # fmt: skip
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < kv_heads) & (offs_d[None, :] < head_dim)

    k = tl.load(
        k_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :] * stride_kd,
        mask=mask,
    )
    v = tl.load(
        v_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :] * stride_vd,
        mask=mask,
    )
    kc_ptrs = (
        k_cache_ptr
        + block * stride_kcb
        + offset * stride_kct
        + offs_h[:, None] * stride_kch
        + offs_d[None, :] * stride_kcd
    )
    vc_ptrs = (
        v_cache_ptr
        + block * stride_vcb
        + offset * stride_vct
        + offs_h[:, None] * stride_vch
        + offs_d[None, :] * stride_vcd
    )
    tl.store(kc_ptrs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptrs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
) -> None:
    """In place: k_cache/v_cache `[num_blocks, block_size, kv_heads, dim]` get k/v
    `[num_tokens, kv_heads, dim]` at `slot_mapping` `[num_tokens]` (-1 = skip). With
    `quant_bits` 8 or 4 the caches are uint8 `[.., packed_dim]` and each token's
    (scale, zero) goes to `k_scale_zero` / `v_scale_zero` `[num_blocks, block_size, kv_heads, 2]`."""
    num_tokens, kv_heads, head_dim = k.shape
    assert v.shape == k.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} must match"
    assert k_cache.shape == v_cache.shape, "k_cache and v_cache must have the same shape"
    cache_dim = head_dim
    if quant_bits:
        cache_dim = packed_dim(head_dim, quant_bits)
        assert head_dim % 2 == 0, f"a quantized cache takes an even head_dim, got {head_dim}"
        assert k_cache.dtype == v_cache.dtype == torch.uint8, "quantized caches are uint8"
        assert k_scale_zero is not None and v_scale_zero is not None, "scale_zero tensors needed"
        assert k_scale_zero.shape == v_scale_zero.shape == (*k_cache.shape[:3], 2), (
            "scale_zero must be [num_blocks, block_size, kv_heads, 2]"
        )
    else:
        k_scale_zero = v_scale_zero = k_cache  # unused
    assert k_cache.shape[2:] == (kv_heads, cache_dim), (
        f"cache [.., kv_heads, dim] = {tuple(k_cache.shape[2:])}, expected {(kv_heads, cache_dim)}"
    )
    assert slot_mapping.shape == (num_tokens,), "slot_mapping must be [num_tokens]"
    assert not slot_mapping.is_floating_point(), "slot_mapping must be an integer tensor"
    if num_tokens == 0:
        return
    _kv_cache_write_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k_scale_zero,
        v_scale_zero,
        kv_heads,
        head_dim,
        *k.stride(),
        *v.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *k_scale_zero.stride(),
        *v_scale_zero.stride(),
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(kv_heads),
        BLOCK_D=max(2, triton.next_power_of_2(head_dim)),
        QUANT_BITS=quant_bits,
        num_warps=4,
    )


def kv_cache_write_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale_zero: torch.Tensor | None = None,
    v_scale_zero: torch.Tensor | None = None,
    quant_bits: int = 0,
) -> None:
    """Plain torch: index_copy_ of the non-padding rows into the flattened caches (quantized
    first by quantize_kv_ref when `quant_bits` is 8 or 4)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    pairs = [(k[keep], k_cache, k_scale_zero), (v[keep], v_cache, v_scale_zero)]
    for x, cache, scale_zero in pairs:
        if quant_bits:
            check_bits(quant_bits)
            x, sz = quantize_kv_ref(x, quant_bits)
            scale_zero.view(-1, *scale_zero.shape[2:]).index_copy_(
                0, slots, sz.to(scale_zero.dtype)
            )
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, x.to(cache.dtype))
