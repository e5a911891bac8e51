"""What the runner and the loader ask of every model family."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from .config import ModelConfig

# Per layer (k_cache, v_cache), or with a quantized cache also its two scale/zero tensors.
KVCaches = list[tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class ImageRows:
    """Input embeddings that replace the token embeddings of a step's image positions:
    `rows[i]` goes to flat token `index[i]` (see runner/image_rows.py)."""

    index: torch.Tensor  # int64 [num_image_tokens]
    rows: torch.Tensor  # [num_image_tokens, hidden_size]


class CausalLM(nn.Module):
    """A decoder over the paged KV cache. Subclasses build their modules from the config and
    name their parameters as the checkpoint does, except for the tensors packed into one
    parameter, which `packed_modules_mapping` declares: checkpoint name fragment -> (parameter
    name fragment, shard id), e.g. 'q_proj' -> ('qkv_proj', 'q'); shard None fills the whole
    parameter under another name. A model whose names depend on its config (one per expert)
    sets its own in `__init__`."""

    packed_modules_mapping: ClassVar[dict[str, tuple[str, Hashable | None]]] = {}
    # Within a decoder layer: a norm or activation -> the one linear that reads its output,
    # where an 8-bit linear may take that output already quantised (`fuse_input_quant`).
    quantized_input_producers: ClassVar[dict[str, str]] = {}

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_caches: KVCaches,
        meta: AttentionMetadata,
        image_rows: ImageRows | None = None,
    ) -> torch.Tensor:
        """Hidden states of every new token: [num_tokens, hidden_size]. `image_rows` (given
        only to vision-language models, only in steps that compute image positions) replace
        the token embeddings of those positions."""
        raise NotImplementedError

    def checkpoint_name(self, name: str) -> str | None:
        """This model's name for checkpoint tensor `name`; None: a tensor it does not hold
        (a vision-language checkpoint's vision tower, which its vision adapter loads)."""
        return name

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab_size] of hidden rows."""
        raise NotImplementedError
