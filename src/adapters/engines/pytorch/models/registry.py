"""HF architecture name (config.json's `architectures`) -> the model class that runs it.

A family is one module of this package plus one line here; its module is imported only when
a checkpoint asks for it.
"""

from __future__ import annotations

import importlib

from .base import CausalLM

# architecture -> (module of this package, class)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),  # Llama with a sliding window
    "InternLM3ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Gemma2ForCausalLM": ("gemma2", "Gemma2ForCausalLM"),
}


class UnsupportedArchitecture(ValueError):
    """No model class runs any of a checkpoint's architectures."""


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def model_class(architectures: tuple[str, ...] | list[str]) -> type[CausalLM]:
    """The class of the first of `architectures` that has one."""
    for arch in architectures:
        if arch in _MODELS:
            module, name = _MODELS[arch]
            return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    raise UnsupportedArchitecture(
        f"architecture {list(architectures)} is not supported yet; supported: "
        f"{', '.join(supported_architectures())}"
    )
