"""A checkpoint our loaders read (HF directory, GGUF file, the embedded model) opened as a
transformers model in float, with its tokenizer: what calibration runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...domain.errors import InvalidArgument
from ..loaders.checkpoint import open_checkpoint
from ..loaders.model_source import resolve
from ..tokenizers.hf_tokenizer import HFTokenizer

# The decoder families whose layers calibration knows (their HF architecture -> model_type).
MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass
class HFFloatModel:
    model: nn.Module  # transformers' *ForCausalLM, eval mode
    tokenizer: Any  # transformers' tokenizer
    source_dir: Any  # the checkpoint's directory (for files to copy), None for GGUF


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.float16 if device.type == "cuda" else torch.float32


def open_hf_float_model(model_path: str, dtype: str = "auto", device: str = "auto") -> HFFloatModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve(model_path)
    hf_config, weights = open_checkpoint(source)
    if weights is None:
        raise InvalidArgument("model", f"{model_path} has no weights to quantise")
    arch = (hf_config.get("architectures") or ["?"])[0]
    if arch not in MODEL_TYPES:
        raise InvalidArgument(
            "model",
            f"{arch} cannot be quantised by smooth_quant in this build; supported: "
            f"{', '.join(MODEL_TYPES)}",
        )
    if "quantization_config" in hf_config:
        raise InvalidArgument(
            "model", f"{model_path} is already quantised; pass its float checkpoint"
        )
    fields = {k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model(MODEL_TYPES[arch], architectures=[arch], **fields)
    target = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    float_dtype = pick_dtype(dtype, target)
    model = AutoModelForCausalLM.from_config(config, dtype=float_dtype)
    state = dict(weights())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(
            f"{model_path}: weights do not match {arch}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.tie_weights()
    tokenizer = HFTokenizer.from_source(source).hf_tokenizer
    directory = source.directory if source.kind == "hf" else None
    return HFFloatModel(model.to(target).eval(), tokenizer, directory)
