"""The quantized KV cache's format (`quant_policy` 8 or 4), and its PyTorch reference.

Each token's vector of one kv head (`head_dim` values) is quantized on its own, asymmetric:
`scale = (max - min) / (2**bits - 1)`, `zero = -min / scale`, `q = round(x / scale + zero)`
clamped to [0, 2**bits - 1]; it reads back as `(q - zero) * scale`. int4 then tries the range
shrunk around its midpoint (`INT4_RANGE_SHRINKS`) in place of [min, max] and keeps the
(scale, zero) that reads back with the least squared error: the same format, a better pair.
As in LMDeploy, the cache stays `[num_blocks, block_size, kv_heads, packed_dim]` of uint8
and a second tensor per cache, `[num_blocks, block_size, kv_heads, 2]` in the model's dtype,
holds (scale, zero) of every slot: block-major like the data, so a block's scales move with it (swap, prefix reuse).

int8: one value a byte, `packed_dim = head_dim`. int4: two a byte, `packed_dim = head_dim / 2`;
byte j holds dim j in its low nibble and dim j + head_dim / 2 in its high one, so a kernel
unpacks a whole head from one load (byte `d % half`, shift `4 * (d // half)`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

QUANT_BITS = (8, 4)


def check_bits(bits: int) -> None:
    if bits not in QUANT_BITS:
        raise ValueError(f"KV cache quantization takes 8 or 4 bits (quant_policy), got {bits}")


def packed_dim(head_dim: int, bits: int) -> int:
    """Bytes of one token's head in the quantized cache."""
    check_bits(bits)
    if bits == 4 and head_dim % 2:
        raise ValueError(f"int4 KV packs two dims a byte: head_dim {head_dim} must be even")
    return head_dim * bits // 8


# int4's range shrinks tried per token, around the midpoint of [min, max]: the one whose
# read-back has the least squared error is kept. With 16 levels the step rounding costs on
# every dim outweighs the error of clipping the one or two extreme dims (benchmark/NOTES.md,
# "KV int4 accuracy"); int8's 256 levels keep min/max.
INT4_RANGE_SHRINKS = tuple(1.0 - 0.05 * i for i in range(7))  # kv_cache_write.py's too


def quantize_kv_ref(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (uint8 [..., packed_dim], scale_zero [..., 2] in x's dtype).
    The math is float32. int8 spans each vector's [min, max]; int4 the shrink of it
    (INT4_RANGE_SHRINKS) that reads back closest, the widest of equals."""
    check_bits(bits)
    qmax = 2**bits - 1
    xf = x.float()
    lo, hi = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)  # [..., 1]: one range
    if bits == 4:  # [..., shrinks]: every range tried, [min, max] itself first
        mid, shrinks = (lo + hi) / 2, torch.tensor(INT4_RANGE_SHRINKS[1:], device=x.device)
        lo = torch.cat([lo, mid + (lo - mid) * shrinks], -1)
        hi = torch.cat([hi, mid + (hi - mid) * shrinks], -1)
    scale = (hi - lo) / qmax
    # Rounded to x's dtype first: the stored pair is what dequantisation will read.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(x.dtype).float()
    zero = (-lo / scale).to(x.dtype).float()
    xs = xf.unsqueeze(-2)  # [..., 1, head_dim] against [..., ranges, 1]
    q = torch.floor(xs / scale[..., None] + zero[..., None] + 0.5).clamp_(0, qmax)
    err = ((q - zero[..., None]) * scale[..., None] - xs).square().sum(-1)
    best = err.argmin(-1, keepdim=True)  # the first of equal minima
    q = q.gather(-2, best[..., None].expand(*q.shape[:-2], 1, q.shape[-1])).squeeze(-2)
    scale_zero = torch.stack([scale.gather(-1, best), zero.gather(-1, best)], -1).squeeze(-2)
    q = q.to(torch.uint8)
    if bits == 4:
        half = x.shape[-1] // 2
        q = q[..., :half] | (q[..., half:] << 4)
    return q, scale_zero.to(x.dtype)


def dequantize_kv_ref(
    q: torch.Tensor, scale_zero: torch.Tensor, bits: int, dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [..., packed_dim] and scale_zero [..., 2] -> [..., head_dim] in `dtype`."""
    check_bits(bits)
    if bits == 4:
        q = torch.cat([q & 0xF, q >> 4], -1)
    scale, zero = scale_zero.float().unbind(-1)
    return ((q.float() - zero[..., None]) * scale[..., None]).to(dtype)


@triton.jit
def tile_slots(bt_row, tile, offs_n, end, d_mask, stride_btb, BLOCK_SIZE: tl.constexpr):
    """Where the keys at positions tile + offs_n (those before `end`) of one sequence sit in the
    paged cache: (the positions, n_mask, block [int64], slot in the block, the [BLOCK_N, BLOCK_D]
    load mask), each position's block looked up in the sequence's block-table row `bt_row`."""
    pos = tile + offs_n
    n_mask = pos < end
    block = tl.load(bt_row + (pos // BLOCK_SIZE) * stride_btb, mask=n_mask, other=0)
    return pos, n_mask, block.to(tl.int64), pos % BLOCK_SIZE, n_mask[:, None] & d_mask[None, :]


@triton.jit
def load_kv_tile(
    cache_ptr,
    sz_ptr,
    block,
    slot,
    head,
    offs_d,
    n_mask,
    kv_mask,
    half,
    stride_b,
    stride_t,
    stride_h,
    stride_d,
    stride_sb,
    stride_st,
    stride_sh,
    stride_sd,
    OUT_DTYPE: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):
    """The [BLOCK_N, BLOCK_D] K or V tile of tokens (block, slot) of one kv head, read as the
    attention kernels compute: as stored for QUANT_BITS 0, else unpacked and dequantised with
    each token's (scale, zero) in float32, then cast to OUT_DTYPE (the query's dtype)."""
    row = cache_ptr + block[:, None] * stride_b + slot[:, None] * stride_t + head * stride_h
    if QUANT_BITS == 0:
        tile = tl.load(row + offs_d[None, :] * stride_d, mask=kv_mask, other=0.0)
    else:
        if QUANT_BITS == 4:
            byte = tl.load(row + (offs_d % half)[None, :] * stride_d, mask=kv_mask, other=0)
            quant = (byte.to(tl.int32) >> ((offs_d // half) * 4)[None, :]) & 15
        else:
            quant = tl.load(row + offs_d[None, :] * stride_d, mask=kv_mask, other=0)
        scale, zero = load_scale_zero(
            sz_ptr, block, slot, head, n_mask, stride_sb, stride_st, stride_sh, stride_sd
        )
        tile = ((quant.to(tl.float32) - zero[:, None]) * scale[:, None]).to(OUT_DTYPE)
    return tile


@triton.jit
def load_scale_zero(sz_ptr, block, slot, head, n_mask, stride_sb, stride_st, stride_sh, stride_sd):
    """(scale, zero) in float32 of tokens (block, slot) of one kv head, [BLOCK_N] each; 0 for
    masked tokens."""
    sz = sz_ptr + block * stride_sb + slot * stride_st + head * stride_sh
    scale = tl.load(sz, mask=n_mask, other=0.0).to(tl.float32)
    zero = tl.load(sz + stride_sd, mask=n_mask, other=0.0).to(tl.float32)
    return scale, zero


@triton.jit
def load_codes(
    cache_ptr, sz_ptr, block, slot, head, offs_c, n_mask, mask, stride_b, stride_t, stride_h,
    stride_d, stride_sb, stride_st, stride_sh, stride_sd,
):  # fmt: skip
    """The stored bytes [BLOCK_N, len(offs_c)] of tokens (block, slot) of one kv head, as they
    are (masked ones 0), with each token's (scale, zero): the decode kernel dots the codes and
    corrects for (scale, zero) per token after, instead of dequantising every element."""
    row = cache_ptr + block[:, None] * stride_b + slot[:, None] * stride_t + head * stride_h
    codes = tl.load(row + offs_c[None, :] * stride_d, mask=mask, other=0)
    scale, zero = load_scale_zero(
        sz_ptr, block, slot, head, n_mask, stride_sb, stride_st, stride_sh, stride_sd
    )
    return codes, scale, zero


def check_quantized_caches(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale_zero: torch.Tensor | None,
    v_scale_zero: torch.Tensor | None,
    head_dim: int,
    quant_bits: int,
) -> None:
    """The launchers' shape checks of a quantized cache pair and its scale_zero tensors (the
    kernels read both scale_zero tensors with k_scale_zero's strides)."""
    assert k_cache.dtype == v_cache.dtype == torch.uint8, "quantized caches are uint8"
    assert k_cache.shape[3] == packed_dim(head_dim, quant_bits), (
        f"a {quant_bits}-bit cache holds {packed_dim(head_dim, quant_bits)} bytes a head, "
        f"got {k_cache.shape[3]}"
    )
    assert k_scale_zero is not None and v_scale_zero is not None, "scale_zero tensors needed"
    assert k_scale_zero.shape == v_scale_zero.shape == (*k_cache.shape[:3], 2), (
        "scale_zero must be [num_blocks, block_size, kv_heads, 2]"
    )
    assert k_scale_zero.stride() == v_scale_zero.stride(), "k/v scale_zero strides must match"
