"""Random weights of a known shape: how real model sizes are benchmarked without a download."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from torch import nn

# Published config.json of each shape, by short name and by hub id.
SHIPPED_CONFIGS = {
    "llama-3-8b": "llama-3-8b.json",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b.json",
    "qwen2.5-7b": "qwen2.5-7b.json",
    "Qwen/Qwen2.5-7B": "qwen2.5-7b.json",
    "mistral-7b": "mistral-7b.json",
    "mistralai/Mistral-7B-v0.1": "mistral-7b.json",
    "qwen3-30b-a3b": "qwen3-30b-a3b.json",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b.json",
    "mixtral-8x7b": "mixtral-8x7b.json",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b.json",
}


def shipped_config(name: str) -> dict[str, Any] | None:
    """The HF config.json of a shipped shape, or None for a name that is not one."""
    file = SHIPPED_CONFIGS.get(name)
    if file is None:
        return None
    return json.loads(resources.files("lmdeploy.configs").joinpath(file).read_text())


# A quantized weight's scale: with random 4-bit codes and zeros (q - z spreads ~6.5 wide), the
# dequantised weights come out about as wide as the dense ones' 0.02.
_QUANT_SCALE = 0.003


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> None:
    """Small normal weights keep activations finite through every layer; norms stay at one.
    A quantized linear's integer tensors (packed codes and zeros) get random bits, its
    scales a small positive value, so its weights look like the dense ones."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if "norm" in name:
            param.fill_(1.0)
            continue
        gen = generators.setdefault(param.device, torch.Generator(param.device).manual_seed(seed))
        if not param.is_floating_point():
            info = torch.iinfo(param.dtype)
            param.random_(info.min, info.max, generator=gen)
        elif name.endswith("scales"):
            param.normal_(_QUANT_SCALE, _QUANT_SCALE / 10, generator=gen)
        else:
            param.normal_(0.0, 0.02, generator=gen)
