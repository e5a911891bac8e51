"""The token embedding and the LM head (its own weight, or tied to the embedding's), both split
by vocabulary rows across tensor-parallel ranks: a rank embeds the ids in its rows (zeros for
the others) and the ranks' rows are summed; the LM head's logits of each rank's rows are
gathered side by side. The vocabulary is padded to a multiple of the ranks (zero rows, cut from
the logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ....loaders.gguf_file import QuantizedWeight
from ..backends.cpu import gguf_linear
from ..backends.cpu.linear import PackedLinear
from ..distributed.parallel_state import (
    all_gather_last_dim,
    all_reduce,
    tp_size,
    vocab_range,
)
from .linear import LinearBase


def _load_vocab_rows(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """This rank's rows of a [vocab, hidden] checkpoint tensor; padding rows stay zero."""
    start, per_rank = vocab_range(loaded.shape[0])
    rows = loaded[start : start + per_rank]
    param.data[: rows.shape[0]].copy_(rows)
    param.data[rows.shape[0] :].zero_()


def _gather_logits(local: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 logits [rows, vocab_size] from each rank's [rows, vocab rows of the rank]."""
    return all_gather_last_dim(local)[..., :vocab_size].float()


class VocabEmbedding(nn.Module):
    """Token ids -> rows of `weight` [vocab_size, hidden_size], times `scale` if given (Gemma:
    sqrt(hidden_size), rounded to the weight's dtype as transformers does; a tied LM head reads
    the weight unscaled). A GGUF table the loader kept quantized stays in its blocks (`gguf`),
    its rows dequantized as they are looked up."""

    def __init__(self, vocab_size: int, hidden_size: int, scale: float | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.vocab_start, per_rank = vocab_range(vocab_size)
        self.weight = nn.Parameter(torch.empty(per_rank, hidden_size))
        self.scale = scale
        self.gguf: QuantizedWeight | None = None

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id: object = None
    ) -> None:
        if isinstance(loaded, QuantizedWeight):
            # Blocks kept whole: the builder keeps GGUF blocks only at tp=1.
            if tp_size() == 1 and gguf_linear.supports(loaded.qtype, loaded.cols):
                self.gguf = loaded
                # The float32 table is never read: keep an empty one (dtype and device only).
                self.weight = nn.Parameter(torch.empty(0, device=param.device), False)
                return
            loaded = loaded.dequantize()
        _load_vocab_rows(param, loaded)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.gguf is not None:
            flat = gguf_linear.dequantize_rows(
                self.gguf.blocks, self.gguf.qtype, self.gguf.cols, input_ids
            )
            rows = flat.reshape(*input_ids.shape, self.gguf.cols)
        elif tp_size() == 1:
            rows = F.embedding(input_ids, self.weight)
        else:
            local = input_ids - self.vocab_start
            mine = (local >= 0) & (local < self.weight.shape[0])
            rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
            rows = all_reduce(rows * mine.unsqueeze(-1).to(rows.dtype))
        if self.scale is None:
            return rows
        return rows * torch.tensor(self.scale, dtype=torch.float32).to(self.weight.dtype)


class ParallelLMHead(LinearBase):
    """Hidden rows -> float32 logits [rows, vocab_size] (vocabulary-parallel at tp > 1)."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__(hidden_size, vocab_range(vocab_size)[1], bias=False)
        self.vocab_size = vocab_size

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id: object = None
    ) -> None:
        if isinstance(loaded, QuantizedWeight):
            if tp_size() == 1:  # GGUF blocks kept whole, for the quantized kernels
                super().weight_loader(param, loaded, None)
                return
            loaded = loaded.dequantize()
        _load_vocab_rows(param, loaded)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _gather_logits(super().forward(hidden), self.vocab_size)


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

    def pack_quantized(self, int8_activations: bool = False) -> bool:
        table = self._embedding[0].gguf
        # The blocks are shared with the embedding: no second copy. (The loader kept them only
        # if the chosen kernel reads their type.)
        self.packed = gguf_linear.GGUFLinear(table.blocks, table.qtype, None, int8_activations)
        return True

    def pack(self) -> None:
        self.packed = PackedLinear(self._embedding[0].weight, None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        embedding = self._embedding[0]
        if self.packed is not None:
            local = self.packed.forward(hidden)  # no hooks on it: skip nn.Module's call
        else:
            local = F.linear(hidden, embedding.weight)
        return _gather_logits(local, embedding.vocab_size)
