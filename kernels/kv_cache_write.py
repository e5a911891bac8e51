"""Write the step's new keys and values into the paged KV cache.

k, v: `[num_tokens, kv_heads, head_dim]`; caches `[num_blocks, block_size, kv_heads, head_dim]`;
token `t` goes to flat slot `slot_mapping[t] = block * block_size + offset`, and slot -1 (a
padding token) is skipped. Grid `(num_tokens,)`: each program copies its token's
`[kv_heads, head_dim]` tile of k and of v (one contiguous run each in the usual layout).

Bytes = 4 * num_tokens * kv_heads * head_dim * e (k, v read; two cache rows written) plus
8 bytes of slot per token; no FLOPs. Bandwidth-bound: target bytes / ~3 TB/s on the H100.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_cache_write_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
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
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
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
) -> None:
    """In place: k_cache/v_cache `[num_blocks, block_size, kv_heads, dim]` get k/v
    `[num_tokens, kv_heads, dim]` at `slot_mapping` `[num_tokens]` (-1 = skip)."""
    num_tokens, kv_heads, head_dim = k.shape
    assert v.shape == k.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} must match"
    assert k_cache.shape == v_cache.shape, "k_cache and v_cache must have the same shape"
    assert k_cache.shape[2:] == (kv_heads, head_dim), (
        f"cache [.., kv_heads, dim] = {tuple(k_cache.shape[2:])}, k has {(kv_heads, head_dim)}"
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
        kv_heads,
        head_dim,
        *k.stride(),
        *v.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )


def kv_cache_write_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Plain torch: index_copy_ of the non-padding rows into the flattened caches."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v[keep].to(v_cache.dtype))
