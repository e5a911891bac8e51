"""A PEFT LoRA checkpoint: `adapter_config.json` and `adapter_model.safetensors` (or `.bin`).

Returns each target module's A [r, in] and B [out, r] under the base model's module name
(`model.layers.0.self_attn.q_proj`), and the adapter's scaling: lora_alpha / r, or
lora_alpha / sqrt(r) with `use_rslora`. Knows nothing of the engine.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

# PEFT names a weight `base_model.model.<module>.lora_A[.<adapter>].weight`.
_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.\w+)?\.weight$")


@dataclass(frozen=True)
class LoraWeights:
    lora_a: torch.Tensor  # [rank, in]
    lora_b: torch.Tensor  # [out, rank]


@dataclass(frozen=True)
class PeftAdapter:
    name: str
    rank: int
    scaling: float
    modules: dict[str, LoraWeights]  # by the base model's module name


def read_peft_adapter(name: str, path: str | Path) -> PeftAdapter:
    """Read the LoRA adapter `name` from a PEFT directory; a clear error for anything else."""
    root = Path(path)
    config_path = root / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"adapter {name!r}: {config_path} not found; pass the directory that PEFT's "
            "save_pretrained() wrote"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {name!r}: peft_type {config['peft_type']!r} is not LORA")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(
            f"adapter {name!r}: per-module rank_pattern/alpha_pattern are not supported; "
            "train the adapter with one r and lora_alpha"
        )
    return PeftAdapter(name, rank, scaling, _pair_up(name, _read_tensors(name, root)))


def _read_tensors(name: str, root: Path) -> dict[str, torch.Tensor]:
    safetensors = root / "adapter_model.safetensors"
    if safetensors.is_file():
        return load_file(str(safetensors))
    bin_file = root / "adapter_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"adapter {name!r}: no adapter_model.safetensors or adapter_model.bin in {root}"
    )


def _pair_up(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, LoraWeights]:
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _NAME.match(key)
        if match is None:
            raise ValueError(
                f"adapter {name!r}: tensor {key!r} is not a LoRA A/B weight (only LoRA "
                "matrices are supported: no modules_to_save, no DoRA magnitudes)"
            )
        halves.setdefault(match["module"], {})[match["ab"]] = tensor
    modules = {}
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"adapter {name!r}: {module} has lora_{''.join(pair)} only")
        modules[module] = LoraWeights(pair["A"], pair["B"])
    return modules
