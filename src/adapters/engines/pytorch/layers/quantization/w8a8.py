"""W8A8 checkpoints of `lmdeploy lite smooth_quant` (`quant_method: smooth_quant`).

Per linear with K inputs and N outputs: `weight` int8 or float8_e4m3fn [N, K] (`quant_dtype`:
int8 when absent, as LMDeploy 0.6.5 writes it) and `scale` fp32 [N, 1], W = weight * scale.
Activations are quantised per token at run time, to the weight's type. The smoothing is
already folded into the norms' weights, which load as in any dense checkpoint.

On CUDA int8 runs the Triton W8A8 GEMM (int32 accumulation); float8 runs `torch._scaled_mm`
where the GPU has FP8 tensor cores (compute capability 8.9+), else the Triton GEMM's fp8 path
is unavailable too and the weight is dequantised. On those 8-bit paths a linear also takes its
input already quantised (`QuantizedActivation`) by the RMSNorm or SiLU-and-mul kernel before
it (`fuse_input_quant`, as LMDeploy's W8A8 fuses them); o_proj's input, the attention output,
is quantised by the separate `per_token_quant` launch.

On a CPU the weight is dequantised once at load, and activations are quantised and dequantised
per token, so the CPU computes what the GPU's 8-bit GEMM computes, up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ......domain.errors import InvalidArgument
from ......kernels.per_token_quant import fake_per_token_quant, per_token_quant
from ......kernels.w8a8_gemm import w8a8_gemm
from .base import LinearMethod, QuantConfig, add_bias
from .config import METHODS
from .quantized_activation import QuantizedActivation

if TYPE_CHECKING:
    from ..linear import LinearBase

QUANT_DTYPES = {"int8": torch.int8, "float8_e4m3fn": torch.float8_e4m3fn}


@dataclass(frozen=True)
class SmoothQuantConfig(QuantConfig):
    method = "smooth_quant"
    quant_dtype: str = "int8"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> SmoothQuantConfig:
        quant_dtype = str(cfg.get("quant_dtype", "int8"))
        if quant_dtype not in QUANT_DTYPES:
            raise InvalidArgument(
                "quantization_config.quant_dtype",
                f"W8A8 {quant_dtype!r} is not supported; this build runs {sorted(QUANT_DTYPES)} "
                f"(re-quantise with `lmdeploy lite smooth_quant --quant-dtype int8|fp8`)",
            )
        return cls(quant_dtype)

    @classmethod
    def default(cls) -> SmoothQuantConfig:
        return cls()

    def linear_method(self) -> LinearMethod:
        return W8A8LinearMethod(QUANT_DTYPES[self.quant_dtype])


def _fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class W8A8LinearMethod(LinearMethod):
    def __init__(self, quant_dtype: torch.dtype) -> None:
        self.quant_dtype = quant_dtype
        # How `apply` multiplies, chosen for the device after loading.
        self.mode = "dequantized"

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        n, k = layer.output_size, layer.input_size
        layer.weight = nn.Parameter(torch.empty(n, k, dtype=self.quant_dtype), requires_grad=False)
        layer.scale = nn.Parameter(torch.empty(n, 1, dtype=torch.float32), requires_grad=False)
        layer.output_dims.update(weight=(0, 1), scale=(0, 1))
        # Kept through the build's `model.to(dtype)`: a float8 weight and an fp32 scale are
        # themselves floating point and would otherwise become the model's dtype.
        layer.keep_dtypes.update(weight=self.quant_dtype, scale=torch.float32)
        add_bias(layer, bias)

    def process_weights_after_loading(self, layer: LinearBase, device: torch.device) -> None:
        if device.type == "cuda" and self.quant_dtype == torch.int8:
            self.mode = "int8"
        elif _fp8_tensor_cores(device):
            self.mode = "fp8"
        else:
            # fp32 until the first call shows the compute dtype (not known here).
            dense = layer.weight.float() * layer.scale
            layer.keep_dtypes.clear()
            layer.weight = nn.Parameter(dense, requires_grad=False)
            layer.register_parameter("scale", None)
            self.mode = "dequantized"

    def prequantized_input(self) -> torch.dtype | None:
        return None if self.mode == "dequantized" else self.quant_dtype

    def apply(self, layer: LinearBase, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if self.mode == "dequantized":
            if layer.weight.dtype != x.dtype:
                layer.weight.data = layer.weight.data.to(x.dtype)
            return F.linear(fake_per_token_quant(x, self.quant_dtype), layer.weight, layer.bias)
        if isinstance(x, QuantizedActivation):  # quantised by the norm or activation before
            x_q, x_scale, out_dtype = x
        else:  # e.g. o_proj's input, the attention output
            x_q, x_scale = per_token_quant(x, self.quant_dtype)
            out_dtype = x.dtype
        lead = x_q.shape[:-1]
        x_q, x_scale = x_q.reshape(-1, x_q.shape[-1]), x_scale.reshape(-1, 1)
        if self.mode == "int8":
            out = w8a8_gemm(x_q, x_scale, layer.weight, layer.scale, out_dtype, layer.bias)
        else:
            out = _fp8_gemm(x_q, x_scale, layer.weight, layer.scale, out_dtype, layer.bias)
        return out.view(*lead, -1)


def _fp8_gemm(x_q, x_scale, weight, scale, out_dtype, bias) -> torch.Tensor:
    """cuBLASLt's FP8 GEMM with one scale per row of x and per row of the weight; its
    row-wise scaling writes bfloat16, which is cast where the model runs in float16."""
    out = torch._scaled_mm(
        x_q,
        weight.t(),
        scale_a=x_scale,
        scale_b=scale.view(1, -1),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
    )
    return out.to(out_dtype)


METHODS["smooth_quant"] = SmoothQuantConfig
