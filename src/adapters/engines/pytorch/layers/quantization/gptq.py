"""GPTQ checkpoints in AutoGPTQ's format (`quant_method: gptq`), without act-order.

Per linear with K inputs and N outputs, group size G: `qweight` int32 [K / 8, N], each int32
holding 8 consecutive input rows (row 8i + s in bits 4s); `qzeros` int32 [K / G, N / 8], 8
consecutive output columns likewise; `scales` [K / G, N]; `g_idx` [K], each row's group.
W[k, n] = (q[k, n] - (z[k // G, n] + 1)) * s[k // G, n]: GPTQ v1 checkpoints store each zero
point minus one (`checkpoint_format: gptq_v2` stores it as is). `sym` changes only the zero
points' values, read from the checkpoint either way. With `desc_act` false, g_idx is
k // G by construction and is not read.
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

SEQUENTIAL = tuple(range(PACK))


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    method = "gptq"
    group_size: int = 128
    sym: bool = True
    zero_offset: int = 1  # v1: stored zero + 1 is the zero point

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> GPTQConfig:
        check_bits(cfg)
        if cfg.get("desc_act", False):
            raise InvalidArgument(
                "quantization_config.desc_act",
                "act-order GPTQ (desc_act=True) is not supported; quantize with desc_act=False",
            )
        fmt = cfg.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2"):
            raise InvalidArgument(
                "quantization_config.checkpoint_format",
                f"{fmt!r} is not supported; use an AutoGPTQ ('gptq') checkpoint",
            )
        return cls(
            group_size=check_group_size(cfg.get("group_size", 128)),
            sym=bool(cfg.get("sym", True)),
            zero_offset=1 if fmt == "gptq" else 0,
        )

    @classmethod
    def default(cls) -> GPTQConfig:
        return cls()

    def linear_method(self) -> LinearMethod:
        return GPTQLinearMethod(self.group_size, self.zero_offset)


class GPTQLinearMethod(W4A16LinearMethod):
    checkpoint_tensors = ("qzeros", "g_idx")

    def __init__(self, group_size: int, zero_offset: int) -> None:
        super().__init__(group_size)
        self.zero_offset = zero_offset

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        self.check_shape(layer)
        k, n, groups = layer.input_size, layer.output_size, layer.input_size // self.group_size
        if k % PACK:
            raise InvalidArgument("model_path", f"{k} inputs are not a multiple of {PACK}")
        layer.qweight = int4_parameter(k // PACK, n)
        layer.qzeros = int4_parameter(groups, n // PACK)
        layer.scales = nn.Parameter(torch.empty(groups, n), requires_grad=False)
        layer.g_idx = int4_parameter(k)
        layer.output_dims.update(qweight=(1, 1), qzeros=(1, PACK), scales=(1, 1))
        add_bias(layer, bias)

    def codes_and_zeros(self, layer: LinearBase) -> tuple[torch.Tensor, torch.Tensor]:
        codes = unpack_int4(layer.qweight.data, 0, SEQUENTIAL)
        zeros = unpack_int4(layer.qzeros.data, 1, SEQUENTIAL) + self.zero_offset
        return codes, zeros


METHODS["gptq"] = GPTQConfig
