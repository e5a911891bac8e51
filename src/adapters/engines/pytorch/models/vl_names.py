"""Vision-language checkpoints hold their language model under a prefix (which differs between
transformers versions) beside the vision tensors: the language model's names under ours."""

from __future__ import annotations

# (checkpoint prefix, ours); a checkpoint name under none of them is a vision tensor.
Prefixes = tuple[tuple[str, str], ...]


def text_model_name(name: str, prefixes: Prefixes) -> str | None:
    """`name` with its prefix replaced by ours; None for a tensor of the image side."""
    for prefix, ours in prefixes:
        if name.startswith(prefix):
            return ours + name[len(prefix) :]
    return None
