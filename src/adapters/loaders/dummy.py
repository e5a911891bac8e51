"""Random weights of a known shape: how real model sizes are benchmarked without a download."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch
from torch import nn

SHIPPED_CONFIGS = {"llama-3-8b": "llama-3-8b.json", "meta-llama/Meta-Llama-3-8B": "llama-3-8b.json"}


def shipped_config(name: str) -> dict[str, Any] | None:
    """The HF config.json of a shipped shape, or None for a name that is not one."""
    file = SHIPPED_CONFIGS.get(name)
    if file is None:
        return None
    return json.loads(resources.files("lmdeploy.configs").joinpath(file).read_text())


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> None:
    """Small normal weights keep activations finite through every layer; norms stay at one."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if "norm" in name:
            param.fill_(1.0)
            continue
        gen = generators.setdefault(param.device, torch.Generator(param.device).manual_seed(seed))
        param.normal_(0.0, 0.02, generator=gen)
