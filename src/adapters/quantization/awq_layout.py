"""4-bit group quantisation with zero points, and AutoAWQ's "gemm" checkpoint layout.

A linear's weight W [out, in] is cut into groups of `group_size` input features per output
row; each group gets a scale s = (max - min) / 15 and an integer zero point z, and
W ~ (q - z) * s with q in 0..15. AutoAWQ stores it transposed, per linear:
`qweight` int32 [in, out / 8], `qzeros` int32 [in / group_size, out / 8] and `scales` fp16
[in / group_size, out]; an int32 holds 8 consecutive output columns, column j of the run in
bits 4 * AWQ_ORDER[j] (AutoAWQ packs columns 0, 2, 4, 6, 1, 3, 5, 7 into nibbles 0..7).
`dequantize_awq` is the reference that reads the layout back with the engine's own unpacking,
so what this writes is what the AWQ loader reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engines.pytorch.layers.quantization.awq import AWQ_ORDER
from ..engines.pytorch.layers.quantization.w4a16 import PACK, unpack_int4

BITS = 4
MAX_CODE = 2**BITS - 1


@dataclass
class GroupQuant:
    """codes int32 [out, in] in 0..15; scales and zeros float32 [out, in / group_size]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def quantize_groups(weight: torch.Tensor, group_size: int) -> GroupQuant:
    """Round-to-nearest asymmetric 4-bit quantisation of `weight` [out, in] by input groups."""
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, in_features // group_size, group_size)
    w_max, w_min = w.amax(dim=-1), w.amin(dim=-1)
    # A constant group would get a zero scale: 1e-5 keeps the division finite (AutoAWQ does too).
    # Rounded to fp16 here, as the checkpoint stores them, so codes match the saved scales.
    scales = ((w_max - w_min).clamp(min=1e-5) / MAX_CODE).half().float()
    zeros = (-torch.round(w_min / scales)).clamp(0, MAX_CODE)
    codes = (torch.round(w / scales[..., None]) + zeros[..., None]).clamp(0, MAX_CODE)
    return GroupQuant(codes.reshape(out_features, in_features).to(torch.int32), scales, zeros)


def dequantize_groups(quant: GroupQuant, group_size: int) -> torch.Tensor:
    codes = quant.codes.float().reshape(*quant.scales.shape, group_size)
    w = (codes - quant.zeros[..., None]) * quant.scales[..., None]
    return w.reshape(quant.codes.shape)


def fake_quantize(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The weight as the 4-bit checkpoint will hold it, in the weight's dtype."""
    return dequantize_groups(quantize_groups(weight, group_size), group_size).to(weight.dtype)


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """Codes [rows, cols] in 0..15 -> int32 [rows, cols / 8] in AWQ's nibble order."""
    rows, cols = codes.shape
    runs = codes.to(torch.int32).reshape(rows, cols // PACK, PACK)
    packed = torch.zeros(rows, cols // PACK, dtype=torch.int32, device=codes.device)
    for column, nibble in enumerate(AWQ_ORDER):
        packed |= runs[..., column] << (BITS * nibble)
    return packed


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_awq`: int32 [rows, cols / 8] -> codes int32 [rows, cols]."""
    return unpack_int4(packed, 1, AWQ_ORDER)


def to_awq_tensors(quant: GroupQuant) -> dict[str, torch.Tensor]:
    """A linear's `qweight`, `qzeros` and `scales` in AutoAWQ's gemm layout."""
    return {
        "qweight": pack_awq(quant.codes.t().contiguous()),
        "qzeros": pack_awq(quant.zeros.t().to(torch.int32).contiguous()),
        "scales": quant.scales.t().contiguous().to(torch.float16),
    }


def dequantize_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """W [out, in] in float32 from an AutoAWQ gemm linear's three tensors."""
    codes = unpack_awq(qweight).float()
    zeros = unpack_awq(qzeros).float().repeat_interleave(group_size, dim=0)
    w = (codes - zeros) * scales.float().repeat_interleave(group_size, dim=0)
    return w.t().contiguous()
