"""LLaVA and LLaVA-NeXT (llava-hf checkpoints): the language model is Llama's (Vicuna,
Mistral and Yi text configs all are); the images' embeddings arrive as `image_rows` from the
vision adapter (adapters/vision/llava.py), which loads the vision tower and projector."""

from __future__ import annotations

from .llama import LlamaForCausalLM
from .vl_names import text_model_name

# Checkpoint prefix -> ours: transformers 5 saves `model.language_model.*`, earlier llava-hf
# checkpoints `language_model.model.*` and `language_model.lm_head.*`.
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)


class LlavaForConditionalGeneration(LlamaForCausalLM):
    def checkpoint_name(self, name: str) -> str | None:
        return text_model_name(name, _TEXT_PREFIXES)  # None: the vision tower, the projector
