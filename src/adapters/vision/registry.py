"""HF architecture -> the vision encoder of that vision-language family (None: text only)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from ...application.ports import VisionEncoder

# architecture -> (module of this package, class)
_ENCODERS: dict[str, tuple[str, str]] = {
    "LlavaForConditionalGeneration": ("llava", "LlavaVisionEncoder"),
    "LlavaNextForConditionalGeneration": ("llava", "LlavaVisionEncoder"),
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "Qwen2VLVisionEncoder"),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_vl", "Qwen2VLVisionEncoder"),
    "InternVLForConditionalGeneration": ("internvl", "InternVLVisionEncoder"),
}


def is_vision_model(hf_config: dict[str, Any]) -> bool:
    """Whether the checkpoint's architecture is a vision-language family's."""
    return any(arch in _ENCODERS for arch in hf_config.get("architectures") or ())


def vision_encoder(
    directory: Path | None,
    hf_config: dict[str, Any],
    weights: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> VisionEncoder | None:
    """The encoder of the checkpoint's family, loaded; None for a text-only model.
    `weights`: the checkpoint's named tensors (None: random weights)."""
    for arch in hf_config.get("architectures") or ():
        if arch in _ENCODERS:
            module, name = _ENCODERS[arch]
            cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            return cls.load(directory, hf_config, weights, device, dtype)
    return None
