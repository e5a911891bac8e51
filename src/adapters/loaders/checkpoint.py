"""A model's checkpoint, whatever its format: an HF-style config dict and its named weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from . import dummy, gguf_file, safetensors_dir
from .model_source import ModelSource

Weights = Callable[[], Iterator[tuple[str, torch.Tensor]]]


def open_checkpoint(source: ModelSource) -> tuple[dict[str, Any], Weights | None]:
    """The model's HF config, and a function yielding its HF-named weights (None: random
    weights, `dummy.randomize`)."""
    if source.path is None:
        return dummy.shipped_config(source.name), None
    if source.path.suffix == ".gguf":
        checkpoint = gguf_file.GGUFCheckpoint(source.path)
        config, weights = checkpoint.config, checkpoint.weights
    else:
        config = safetensors_dir.read_config(source.path)
        weights = partial(safetensors_dir.iter_weights, source.path)
    return config, (None if source.kind == "dummy" else weights)
