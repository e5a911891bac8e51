"""A tiny random Llama checkpoint and LoRA adapters for it made with `peft` (random A and B,
so each adapter changes the ids), saved as PEFT writes them; and peft's own greedy ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedModel

from .tiny_models import TINY_SHAPE, save_tiny_checkpoint, tiny_model

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (rank, alpha, targets, use_rslora): ranks 8 and 16, every target, one rslora.
ADAPTERS = {
    "all8": (8, 16, ALL_TARGETS, False),
    "qv_mlp16": (16, 32, ["q_proj", "v_proj", "gate_proj", "down_proj"], True),
    "kou8": (8, 8, ["k_proj", "o_proj", "up_proj"], False),
    "all16": (16, 16, ALL_TARGETS, False),
}

CONFIG = transformers.LlamaConfig(**TINY_SHAPE, tie_word_embeddings=False)


@dataclass(frozen=True)
class LoraSetup:
    base_dir: Path
    adapter_dirs: dict[str, Path]


def make_lora_setup(
    root: Path, hf_tokenizer, names: tuple[str, ...] = tuple(ADAPTERS)
) -> LoraSetup:
    """The base checkpoint and the adapters `names` of `ADAPTERS`, under `root`."""
    from peft import LoraConfig, get_peft_model

    base_dir = root / "base"
    save_tiny_checkpoint(CONFIG, base_dir, hf_tokenizer)
    dirs = {}
    for seed, (name, (rank, alpha, targets, rslora)) in enumerate(ADAPTERS.items(), start=1):
        if name not in names:
            continue
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=targets, use_rslora=rslora,
            init_lora_weights=False,
        )  # fmt: skip
        model = get_peft_model(tiny_model(CONFIG), config)
        torch.manual_seed(seed)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.normal_(0.0, 0.15)
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
    return LoraSetup(base_dir, dirs)


def peft_model(setup: LoraSetup, name: str | None) -> PreTrainedModel:
    """The base model (None) or the base with adapter `name`, as transformers + peft run it."""
    from peft import PeftModel

    base = tiny_model(CONFIG)
    return base if name is None else PeftModel.from_pretrained(base, setup.adapter_dirs[name])


def peft_greedy(model: PreTrainedModel, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()
