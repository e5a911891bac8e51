"""Which quantization a checkpoint's linears use: its `quantization_config`, else the engine's
`model_format`; None for a dense checkpoint."""

from __future__ import annotations

from typing import Any

from ......domain.errors import InvalidArgument
from .base import QuantConfig

# quant_method (and model_format) -> its config class; each method's module adds itself here.
METHODS: dict[str, type[QuantConfig]] = {}

# model_format values that name no quantization.
DENSE_FORMATS = (None, "hf", "meta_llama")


def resolve_quant_config(hf_config: dict[str, Any], model_format: str | None) -> QuantConfig | None:
    """The checkpoint's own `quantization_config` wins; a `model_format` that contradicts it
    is an error, and one given for a checkpoint without it selects that method's defaults
    (LMDeploy's AWQ checkpoints of old carry none)."""
    declared = hf_config.get("quantization_config")
    if declared is None:
        if model_format in DENSE_FORMATS:
            return None
        return _method(model_format, "model_format").default()
    method = str(declared.get("quant_method", "")).lower()
    config_cls = _method(method, "quantization_config.quant_method")
    if model_format not in DENSE_FORMATS and model_format != method:
        raise InvalidArgument(
            "model_format",
            f"{model_format!r} contradicts the checkpoint's quantization_config (quant_method "
            f"{method!r}); leave model_format unset to use the checkpoint's",
        )
    return config_cls.from_hf(declared)


def _method(name: str | None, field: str) -> type[QuantConfig]:
    if name not in METHODS:
        raise InvalidArgument(
            field,
            f"quantization {name!r} is not supported; this build runs {sorted(METHODS)} "
            f"checkpoints (or dense ones)",
        )
    return METHODS[name]
