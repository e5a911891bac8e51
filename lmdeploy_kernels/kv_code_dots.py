"""q . k over a quantized KV cache's codes, without dequantizing them first (the decode kernel's
inner loop, lmdeploy_kernels/paged_decode_attention.py).

k = (codes - zero) * scale, so q . k = scale * (q . codes - zero * sum q): the codes go to the
dot as they are, turned into floats by a logical op (the bits of 128 + n in bf16, 1024 + c in
fp16) instead of a conversion through the quarter-rate I2F, and the constant they carry joins the
zero. The cache format is kv_quant.py's.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def nibble_offset(DTYPE: tl.constexpr):
    """What `nibbles` adds to each code: its exponent bits' value (0 where it converts)."""
    if DTYPE == tl.bfloat16:
        return 128.0
    elif DTYPE == tl.float16:
        return 1024.0
    else:
        return 0.0


@triton.jit
def fp16_1024_plus(codes):
    """Codes c < 1024 as the fp16 bits 0x6400 | c, which read as 1024 + c: one logical op."""
    return (codes.to(tl.uint16) | 0x6400).to(tl.float16, bitcast=True)


@triton.jit
def nibbles(codes, HIGH: tl.constexpr, DTYPE: tl.constexpr):
    """One nibble n of each uint8 code as DTYPE: for bf16 the bits 0x4300 | n, which read as
    128 + n (fp16: 0x6400 | n, 1024 + n), a logical op where a conversion would go through the
    quarter-rate I2F; the caller adds `nibble_offset` to the zero. Float32 converts."""
    nibble = (codes >> 4) if HIGH else (codes & 15)
    if DTYPE == tl.bfloat16:
        return (nibble.to(tl.uint16) | 0x4300).to(tl.bfloat16, bitcast=True)
    elif DTYPE == tl.float16:
        return fp16_1024_plus(nibble)
    else:
        return nibble.to(DTYPE)


@triton.jit
def byte_codes(codes, DTYPE: tl.constexpr):
    """int8 codes c as a dot operand: for a 16-bit DTYPE the fp16 bits 0x6400 | c, which read as
    1024 + c (exact: bf16 would hold 128 + c only for c < 128), a logical op where a conversion
    goes through the quarter-rate I2F; the caller adds `byte_offset` to the zero and gives the
    dot's other operand as `byte_operand`. Float32 converts."""
    if DTYPE == tl.float32:
        return codes.to(tl.float32)
    else:
        return fp16_1024_plus(codes)


@triton.jit
def byte_offset(DTYPE: tl.constexpr):
    """What `byte_codes` adds to each code."""
    if DTYPE == tl.float32:
        return 0.0
    else:
        return 1024.0


@triton.jit
def byte_operand(x, DTYPE: tl.constexpr, NONNEGATIVE: tl.constexpr):
    """The other operand of a dot with `byte_codes`: fp16 for a 16-bit DTYPE (a bf16 value
    clamped to fp16's range first, from above only where x >= 0; every bf16 value inside it
    converts exactly), else x as it is."""
    if DTYPE == tl.float32:
        return x
    else:
        x = tl.minimum(x.to(tl.float32), 65504.0)
        if not NONNEGATIVE:
            x = tl.maximum(x, -65504.0)
        return x.to(tl.float16)


@triton.jit
def quantized_scores(
    q, q_hi, q_sum, codes, scale, zero, DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):  # fmt: skip
    """q . k of each head and token, k = (codes - zero) * scale, as s * (q . codes - z * sum q):
    the codes go to the dot as they are, offset by a constant that `zero` takes too, so the
    per-element work is a logical op (`nibbles`, `byte_codes`); int4 dots each nibble with its half
    of q (the low nibble holds dim c, the high one dim c + half, kv_quant.py); int8's q comes
    as `byte_operand`."""
    if QUANT_BITS == 4:
        raw = tl.dot(q, tl.trans(nibbles(codes, False, DTYPE)), input_precision=DOT_PRECISION)
        raw = tl.dot(
            q_hi, tl.trans(nibbles(codes, True, DTYPE)), raw, input_precision=DOT_PRECISION
        )
        zero = zero + nibble_offset(DTYPE)
    else:
        raw = tl.dot(q, tl.trans(byte_codes(codes, DTYPE)), input_precision=DOT_PRECISION)
        zero = zero + byte_offset(DTYPE)
    return (raw - q_sum[:, None] * zero[None, :]) * scale[None, :]


@triton.jit
def quantized_scores_transposed(
    q_t, q_hi_t, q_sum, codes, scale, zero, DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    QUANT_BITS: tl.constexpr,
):  # fmt: skip
    """`quantized_scores` transposed: [BLOCK_N, BLOCK_H] scores from the codes [BLOCK_N, ..] as
    the dot's first operand and q^T [.., BLOCK_H] as its second, so the group's few heads are the
    dot's narrow N instead of rows padded to 16."""
    if QUANT_BITS == 4:
        raw = tl.dot(nibbles(codes, False, DTYPE), q_t, input_precision=DOT_PRECISION)
        raw = tl.dot(nibbles(codes, True, DTYPE), q_hi_t, raw, input_precision=DOT_PRECISION)
        zero = zero + nibble_offset(DTYPE)
    else:
        raw = tl.dot(byte_codes(codes, DTYPE), q_t, input_precision=DOT_PRECISION)
        zero = zero + byte_offset(DTYPE)
    return (raw - zero[:, None] * q_sum[None, :]) * scale[:, None]
