"""A model's checkpoint, whatever its format: an HF-style config dict and its named weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from . import dummy, gguf_file, safetensors_dir
from .model_source import ModelSource


class Weights(Protocol):
    """Yields a checkpoint's HF-named weights; GGUF matrices of a type in `keep_quantized` come
    as `QuantizedWeight` (other formats ignore it)."""

    def __call__(
        self, keep_quantized: frozenset[str] = frozenset()
    ) -> Iterator[tuple[str, torch.Tensor | gguf_file.QuantizedWeight]]: ...


def _safetensors_weights(path: Path) -> Weights:
    def weights(keep_quantized: frozenset[str] = frozenset()):
        return safetensors_dir.iter_weights(path)

    return weights


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
        weights = _safetensors_weights(source.path)
    return config, (None if source.kind == "dummy" else weights)
