"""The `lmdeploy lite` use cases wired to their torch adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..adapters.quantization.awq_model import TorchAwqModel
from ..adapters.quantization.w8a8_model import TorchSmoothQuantModel
from ..application.quantization.auto_awq import AutoAwqOptions
from ..application.quantization.auto_awq import auto_awq as auto_awq_use_case
from ..application.quantization.smooth_quant import SmoothQuantOptions
from ..application.quantization.smooth_quant import smooth_quant as smooth_quant_use_case


def smooth_quant(
    model: str,
    options: SmoothQuantOptions,
    device: str = "auto",
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> Path:
    """Quantise `model` (a local HF directory, a .gguf file or the embedded default) to W8A8."""
    return smooth_quant_use_case(
        lambda: TorchSmoothQuantModel.open(model, options.dtype, device),
        options,
        progress or (lambda batches, total: batches),
    )


def auto_awq(
    model: str,
    options: AutoAwqOptions,
    device: str = "auto",
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> Path:
    """Quantise `model` (a local HF directory, a .gguf file or the embedded default) to 4-bit
    AWQ, saved as an AutoAWQ gemm checkpoint."""
    return auto_awq_use_case(
        lambda: TorchAwqModel.open(model, options.dtype, device),
        options,
        progress or (lambda layers, total: layers),
    )
