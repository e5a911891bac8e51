"""HF architecture name (config.json's `architectures`) -> the model class that runs it.

A family is one module of this package plus one line here; its module is imported only when
a checkpoint asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from .base import CausalLM
from .config import ModelConfig

# A model class, or a function of the config that picks one (InternVL: by its text model).
ModelFactory = type[CausalLM] | Callable[[ModelConfig], CausalLM]

# architecture -> (module of this package, class)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),  # Llama with a sliding window
    "InternLM3ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "InternLM2ForCausalLM": ("internlm2", "InternLM2ForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM"),
    "Qwen3MoeForCausalLM": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "Gemma2ForCausalLM": ("gemma2", "Gemma2ForCausalLM"),
    # Vision-language: the language model here, the image side in adapters/vision/.
    "LlavaForConditionalGeneration": ("llava", "LlavaForConditionalGeneration"),
    "LlavaNextForConditionalGeneration": ("llava", "LlavaForConditionalGeneration"),
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    # InternVL's class depends on its text model: a function of the config builds it.
    "InternVLForConditionalGeneration": ("internvl", "internvl_for_conditional_generation"),
}


class UnsupportedArchitecture(ValueError):
    """No model class runs any of a checkpoint's architectures."""


def supported_architectures(custom: Mapping[str, type[CausalLM]] | None = None) -> list[str]:
    return sorted({*_MODELS, *(custom or {})})


def model_class(
    architectures: tuple[str, ...] | list[str],
    custom: Mapping[str, type[CausalLM]] | None = None,
) -> ModelFactory:
    """The class (or factory) of the first of `architectures` that has one; `custom` (the user's
    `custom_module_map`) adds architectures and overrides ours."""
    for arch in architectures:
        if custom and arch in custom:
            return custom[arch]
        if arch in _MODELS:
            module, name = _MODELS[arch]
            return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    raise UnsupportedArchitecture(
        f"architecture {list(architectures)} is not supported yet; supported: "
        f"{', '.join(supported_architectures(custom))}. Another architecture can run through "
        f"PytorchEngineConfig(custom_module_map=...)"
    )
