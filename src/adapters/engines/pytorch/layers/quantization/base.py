"""What every quantization method provides (see the package docstring), and the dense one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..linear import LinearBase


class LinearMethod:
    """How one linear holds, prepares and applies its weights."""

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: LinearBase, device: torch.device) -> None:
        """Nothing to do unless the method keeps another layout on the device."""

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prequantized_input(self) -> torch.dtype | None:
        """The 8-bit dtype in which `apply` also takes its input already quantised per token
        (a `QuantizedActivation`), so the op before it may quantise as it writes; None: a
        float input only."""
        return None


def add_bias(layer: LinearBase, bias: bool) -> None:
    """A bias [output_size], split by output like the weight; every method's the same."""
    layer.register_parameter("bias", nn.Parameter(torch.empty(layer.output_size)) if bias else None)
    layer.output_dims["bias"] = (0, 1)


class UnquantizedLinearMethod(LinearMethod):
    """y = x W^T + b, W [output_size, input_size] as the checkpoint stores it, multiplied by
    `kernel(x, weight, bias)`: F.linear, or on CUDA the decode GEMV where `prepare_linears`
    measured it faster for this shape (backends/cuda/linear.py's `DecodeGemv`)."""

    def __init__(self) -> None:
        self.kernel: Callable[..., torch.Tensor] = F.linear

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.output_size, layer.input_size))
        layer.output_dims["weight"] = (0, 1)
        add_bias(layer, bias)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, layer.weight, layer.bias)


@dataclass(frozen=True)
class QuantConfig:
    """A checkpoint's quantization, as its `quantization_config` states it."""

    method: ClassVar[str]

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> QuantConfig:
        raise NotImplementedError

    @classmethod
    def default(cls) -> QuantConfig:
        raise NotImplementedError

    def linear_method(self) -> LinearMethod:
        raise NotImplementedError
