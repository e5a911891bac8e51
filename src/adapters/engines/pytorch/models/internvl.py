"""InternVL in transformers' format (`InternVLForConditionalGeneration`): the language model
is the family its text_config names (Qwen2 for InternVL2.5/3, Llama for the InternLM-based
ones converted to Llama's layout); the images' embeddings arrive as `image_rows` from
adapters/vision/internvl.py."""

from __future__ import annotations

from .base import CausalLM
from .config import ModelConfig
from .llama import LlamaForCausalLM
from .qwen2 import Qwen2ForCausalLM
from .vl_names import text_model_name

# Saved `language_model.model.*` / `language_model.lm_head.*` (transformers 5 in memory:
# `model.language_model.*`, `lm_head.*`), beside `vision_tower.*` and `multi_modal_projector.*`.
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)


class InternVLQwen2(Qwen2ForCausalLM):
    def checkpoint_name(self, name: str) -> str | None:
        return text_model_name(name, _TEXT_PREFIXES)


class InternVLLlama(LlamaForCausalLM):
    def checkpoint_name(self, name: str) -> str | None:
        return text_model_name(name, _TEXT_PREFIXES)


_BY_TEXT_MODEL = {"qwen2": InternVLQwen2, "llama": InternVLLlama}


def internvl_for_conditional_generation(config: ModelConfig) -> CausalLM:
    """The model of an InternVL checkpoint, by its text_config's model_type."""
    cls = _BY_TEXT_MODEL.get(config.text_model_type or "")
    if cls is None:
        raise NotImplementedError(
            f"InternVL with a {config.text_model_type!r} language model is not supported yet; "
            f"supported: {', '.join(_BY_TEXT_MODEL)} (the -hf checkpoints of InternVL2.5/3)"
        )
    return cls(config)
