"""The token embedding and the LM head (its own weight, or tied to the embedding's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ....loaders.gguf_file import QuantizedWeight
from ..backends.cpu import gguf_linear
from ..backends.cpu.linear import PackedLinear
from .linear import LinearBase


class VocabEmbedding(nn.Module):
    """Token ids -> rows of `weight` [vocab_size, hidden_size], times `scale` if given (Gemma:
    sqrt(hidden_size), rounded to the weight's dtype as transformers does; a tied LM head reads
    the weight unscaled). A GGUF table the loader kept quantized stays in its blocks (`gguf`),
    its rows dequantized as they are looked up."""

    def __init__(self, vocab_size: int, hidden_size: int, scale: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.scale = scale
        self.gguf: QuantizedWeight | None = None

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id=None
    ) -> None:
        if isinstance(loaded, QuantizedWeight):
            if gguf_linear.supports(loaded.qtype, loaded.cols):
                self.gguf = loaded
                # The float32 table is never read: keep an empty one (dtype and device only).
                self.weight = nn.Parameter(torch.empty(0, device=param.device), False)
                return
            loaded = loaded.dequantize()
        param.data.copy_(loaded)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.gguf is not None:
            flat = gguf_linear.dequantize_rows(
                self.gguf.blocks, self.gguf.qtype, self.gguf.cols, input_ids
            )
            rows = flat.reshape(*input_ids.shape, self.gguf.cols)
        else:
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
        self.packed: PackedLinear | gguf_linear.GGUFLinear | None = None

    @property
    def quantized(self) -> bool:
        """Whether the embedding kept GGUF blocks (then `pack_quantized` reads them)."""
        return self._embedding[0].gguf is not None

    def pack_quantized(self) -> bool:
        table = self._embedding[0].gguf
        self.packed = gguf_linear.GGUFLinear(table.blocks, table.qtype, None)  # shared blocks
        return True

    def pack(self) -> None:
        self.packed = PackedLinear(self._embedding[0].weight, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(hidden).float()
        return F.linear(hidden, self._embedding[0].weight).float()
