"""AWQ checkpoints in AutoAWQ's GEMM format (`quant_method: awq`, `version: gemm`).

Per linear with K inputs and N outputs, group size G: `qweight` int32 [K, N / 8] and `qzeros`
int32 [K / G, N / 8], each int32 holding 8 consecutive output columns' 4-bit values in AWQ's
interleaved order (column j of a run of 8 in bits 4 * AWQ_ORDER[j]); `scales` [K / G, N];
W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]. Zero points are always stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ......domain.errors import InvalidArgument
from .base import LinearMethod, QuantConfig, add_bias
from .config import METHODS
from .w4a16 import (
    PACK,
    W4A16LinearMethod,
    check_bits,
    check_group_size,
    int4_parameter,
    unpack_int4,
)

if TYPE_CHECKING:
    from ..linear import LinearBase

# Where column j of a run of 8 sits among an int32's nibbles (AutoAWQ packs columns
# 0, 2, 4, 6, 1, 3, 5, 7 into nibbles 0..7).
AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


@dataclass(frozen=True)
class AWQConfig(QuantConfig):
    method = "awq"
    group_size: int = 128

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> AWQConfig:
        # transformers' names, else AutoAWQ's quant_config.json names (w_bit, q_group_size).
        check_bits(cfg, "bits" if "bits" in cfg else "w_bit")
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise InvalidArgument(
                "quantization_config.version",
                f"AWQ {version!r} kernels' layout is not supported; use an AutoAWQ 'gemm' "
                f"checkpoint",
            )
        if not cfg.get("zero_point", True):
            raise InvalidArgument(
                "quantization_config.zero_point",
                "AWQ without zero points is not supported; quantize with zero_point=True",
            )
        key = "group_size" if "group_size" in cfg else "q_group_size"
        return cls(check_group_size(cfg.get(key, 128), key))

    @classmethod
    def default(cls) -> AWQConfig:
        return cls()

    def linear_method(self) -> LinearMethod:
        return AWQLinearMethod(self.group_size)


class AWQLinearMethod(W4A16LinearMethod):
    checkpoint_tensors = ("qzeros",)

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        self.check_shape(layer)
        k, n, groups = layer.input_size, layer.output_size, layer.input_size // self.group_size
        layer.qweight = int4_parameter(k, n // PACK)
        layer.qzeros = int4_parameter(groups, n // PACK)
        layer.scales = nn.Parameter(torch.empty(groups, n), requires_grad=False)
        layer.output_dims.update(qweight=(1, PACK), qzeros=(1, PACK), scales=(1, 1))
        add_bias(layer, bias)

    def codes_and_zeros(self, layer: LinearBase) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            unpack_int4(layer.qweight.data, 1, AWQ_ORDER),
            unpack_int4(layer.qzeros.data, 1, AWQ_ORDER),
        )


METHODS["awq"] = AWQConfig
