"""The token embedding and the LM head (its own weight, or tied to the embedding's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.cpu.linear import PackedLinear
from .linear import LinearBase


class VocabEmbedding(nn.Module):
    """Token ids -> rows of `weight` [vocab_size, hidden_size], times `scale` if given (Gemma:
    sqrt(hidden_size), rounded to the weight's dtype as transformers does; a tied LM head reads
    the weight unscaled)."""

    def __init__(self, vocab_size: int, hidden_size: int, scale: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight)
        if self.scale is None:
            return rows
        return rows * torch.tensor(self.scale, dtype=torch.float32).to(self.weight.dtype)


class ParallelLMHead(LinearBase):
    """Hidden rows -> float32 logits [rows, vocab_size] (vocabulary-parallel at tp > 1)."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__(hidden_size, vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden).float()


class TiedLMHead(nn.Module):
    """The LM head of tied word embeddings: the embedding's weight, not a parameter of its own
    (nothing to load; a CPU-packed copy, if any, is the only extra one)."""

    def __init__(self, embedding: VocabEmbedding) -> None:
        super().__init__()
        # In a tuple so that it is not registered twice: moved and loaded as the embedding.
        self._embedding = (embedding,)
        self.packed: PackedLinear | None = None

    def pack(self) -> None:
        self.packed = PackedLinear(self._embedding[0].weight, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(hidden).float()
        return F.linear(hidden, self._embedding[0].weight).float()
