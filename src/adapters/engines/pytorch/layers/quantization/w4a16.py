"""What AWQ and GPTQ linears share: 4-bit codes with a scale and a zero point per group of
`group_size` input features, refused early when the engine cannot run them, and turned after
loading into the W4A16 kernel's layout on CUDA or a dense weight on a CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ......domain.errors import InvalidArgument
from .base import LinearMethod, UnquantizedLinearMethod

if TYPE_CHECKING:
    from ..linear import LinearBase

GROUP_SIZES = (32, 64, 128)
PACK = 8  # 4-bit codes in an int32


def check_bits(cfg: dict[str, Any], key: str = "bits") -> None:
    bits = cfg.get(key, 4)
    if bits != 4:
        raise InvalidArgument(
            f"quantization_config.{key}",
            f"{bits}-bit weights are not supported; this build runs 4-bit AWQ/GPTQ checkpoints",
        )


def check_group_size(group_size: Any, key: str = "group_size") -> int:
    if group_size not in GROUP_SIZES:
        raise InvalidArgument(
            f"quantization_config.{key}",
            f"group size {group_size} is not supported; quantize with a group size of "
            f"{', '.join(map(str, GROUP_SIZES))}",
        )
    return int(group_size)


def int4_parameter(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=torch.int32), requires_grad=False)


def unpack_int4(packed: torch.Tensor, dim: int, order: tuple[int, ...]) -> torch.Tensor:
    """int32 codes -> int32 values 0..15, 8 times longer along `dim`: element j of each run of
    8 sits in bits 4 * order[j] of its int32."""
    shifts = 4 * torch.tensor(order, dtype=torch.int32, device=packed.device)
    codes = (packed.unsqueeze(dim + 1) >> shifts.view(-1, *[1] * (packed.dim() - dim - 1))) & 0xF
    return codes.flatten(dim, dim + 1)


class W4A16LinearMethod(LinearMethod):
    """A 4-bit method's common half; a format provides its checkpoint tensors and how to read
    codes [in, out] and zero points [in / group, out] out of them."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def check_shape(self, layer: LinearBase) -> None:
        if layer.input_size % self.group_size:
            raise InvalidArgument(
                "quantization_config.group_size",
                f"group size {self.group_size} does not divide a linear's {layer.input_size} "
                f"input features; this checkpoint cannot be run",
            )
        if layer.output_size % PACK:
            raise InvalidArgument(
                "model_path",
                f"a 4-bit linear's {layer.output_size} outputs are not a multiple of {PACK}",
            )

    def codes_and_zeros(self, layer: LinearBase) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # The checkpoint's tensors of this format, dropped once converted.
    checkpoint_tensors: tuple[str, ...] = ()

    def process_weights_after_loading(self, layer: LinearBase, device: torch.device) -> None:
        codes, zeros = self.codes_and_zeros(layer)
        scales = layer.scales.data
        for name in self.checkpoint_tensors:
            delattr(layer, name)
        if device.type == "cuda":
            from ...backends.cuda.ops import pack_int4_rows  # Triton: only where it runs

            layer.qweight = nn.Parameter(pack_int4_rows(codes), requires_grad=False)
            layer.scales = nn.Parameter(scales, requires_grad=False)
            layer.zeros = nn.Parameter(zeros.to(scales.dtype), requires_grad=False)
            return
        # A CPU runs the dense weight: dequantised once here, then packed like any other.
        groups = self.group_size
        weight = (codes - zeros.repeat_interleave(groups, 0)) * scales.float().repeat_interleave(
            groups, 0
        )
        layer.weight = nn.Parameter(weight.t().contiguous().to(scales.dtype), requires_grad=False)
        layer.method = UnquantizedLinearMethod()

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        from ...backends.cuda.ops import w4a16_gemm  # on CUDA only (CPUs run dense)

        # The bias goes in: at one row the GEMV adds it in its sum (no torch op in the chain).
        return w4a16_gemm(
            x, layer.qweight, layer.scales, layer.zeros, self.group_size, bias=layer.bias
        )
