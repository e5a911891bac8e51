"""A reference 4-bit quantizer (round to nearest per group) and writers of AutoAWQ's and
AutoGPTQ's checkpoint layouts, written from the formats' descriptions, independently of the
engine's readers: the tests' ground truth for what a checkpoint holds."""

from __future__ import annotations

import torch

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i holds column AWQ_PACK_ORDER[i]


def quantize_rtn(weight: torch.Tensor, group: int, sym: bool):
    """W [out, in] -> codes [out, in], zeros [out, in / group] (ints), scales fp16, and the
    dequantised W in float32."""
    w = weight.float().unflatten(1, (-1, group))
    if sym:
        scales = (w.abs().amax(-1) * 2 / 15).clamp(min=1e-6).half()
        zeros = torch.full_like(scales, 8, dtype=torch.int32)
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        scales = ((hi - lo) / 15).clamp(min=1e-6).half()
        zeros = torch.round(-lo / scales.float()).clamp(0, 15).to(torch.int32)
    codes = (torch.round(w / scales.float()[..., None]) + zeros[..., None]).clamp(0, 15)
    codes = codes.to(torch.int32)
    dequant = (codes - zeros[..., None]).float() * scales.float()[..., None]
    return codes.flatten(1), zeros, scales, dequant.flatten(1)


def pack_columns(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """[rows, cols] ints -> int32 [rows, cols / 8], nibble i of each int the column order[i]
    of its run of 8 (bit fields are disjoint: their sum is their OR)."""
    runs = (values.long() & 0xF).unflatten(1, (-1, 8))[..., list(order)]
    return _as_int32((runs << (4 * torch.arange(8))).sum(-1))


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] ints -> int32 [rows / 8, cols], nibble i of each int the row 8r + i."""
    runs = (values.long() & 0xF).unflatten(0, (-1, 8))
    return _as_int32((runs << (4 * torch.arange(8))[:, None]).sum(1))


def _as_int32(packed: torch.Tensor) -> torch.Tensor:
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def to_awq(codes, zeros, scales, group):
    return {
        "qweight": pack_columns(codes.t(), AWQ_PACK_ORDER),
        "qzeros": pack_columns(zeros.t(), AWQ_PACK_ORDER),
        "scales": scales.t().contiguous(),
    }, {
        "quant_method": "awq",
        "bits": 4,
        "group_size": group,
        "zero_point": True,
        "version": "gemm",
    }


def to_gptq(codes, zeros, scales, group, sym):
    in_features = codes.shape[1]
    return {
        "qweight": pack_rows(codes.t()),
        "qzeros": pack_columns(zeros.t() - 1, tuple(range(8))),  # v1: zero point minus one
        "scales": scales.t().contiguous(),
        "g_idx": torch.arange(in_features, dtype=torch.int32) // group,
    }, {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False, "sym": sym}
