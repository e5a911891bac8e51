"""Weights and model shape from a local HF directory: config.json plus *.safetensors shards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def read_config(directory: Path) -> dict[str, Any]:
    """config.json as it is; the engine picks the model class from its `architectures`."""
    return json.loads((directory / "config.json").read_text())


def shard_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has a config.json but no *.safetensors weights")
    return files


def iter_weights(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in shard_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
