"""Qwen2-VL and Qwen2.5-VL: the language model is Qwen2's, its rotary M-RoPE (the runner
builds the 3-D positions from the images' grids: runner/mrope.py, layers/rotary.py); the
images' embeddings arrive as `image_rows` from adapters/vision/qwen2_vl.py."""

from __future__ import annotations

from .qwen2 import Qwen2ForCausalLM
from .vl_names import text_model_name

# transformers 5 names the language model `model.language_model.*` in memory and saves the
# Qwen checkpoints' own `model.*` beside `visual.*` (the vision tower and merger).
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)


class Qwen2VLForConditionalGeneration(Qwen2ForCausalLM):
    def checkpoint_name(self, name: str) -> str | None:
        if name.startswith(("visual.", "model.visual.")):
            return None  # the vision tower and merger (the vision adapter loads them)
        return text_model_name(name, _TEXT_PREFIXES)
