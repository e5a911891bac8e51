"""Weights and model shape from a local HF directory: config.json plus *.safetensors shards
(or PyTorch .bin files)."""

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
    """The weight files: *.safetensors, else PyTorch's pytorch_model*.bin (what LMDeploy 0.6.5's
    `lite` commands and older checkpoints save), each by its index when there is one."""
    for index_name, pattern in (
        ("model.safetensors.index.json", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        index = directory / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [directory / name for name in sorted(set(weight_map.values()))]
        files = sorted(directory.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(
        f"{directory} has a config.json but no *.safetensors or pytorch_model*.bin weights"
    )


def iter_weights(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in shard_files(directory):
        if file.suffix == ".bin":
            # weights_only: a pickle from elsewhere cannot run code; mmap: no second copy.
            yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()
            continue
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
