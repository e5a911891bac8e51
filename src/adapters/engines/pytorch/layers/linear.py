"""The linears of every model, and the seam where other kinds plug in.

vLLM's family, with tensor parallelism at 1 for now: `ColumnParallelLinear` splits its outputs
across ranks, `RowParallelLinear` its inputs (one all-reduce after it), `QKVParallelLinear` and
`MergedColumnParallelLinear` hold several checkpoint tensors packed along the output dimension.
Each owns a `weight_loader(param, loaded, shard_id)` that places one checkpoint tensor (a shard
of a packed weight, by its `shard_id`) in its parameter; the generic loader
(`models/weights.py`) calls it. Quantized, tensor-parallel and
LoRA linears subclass `LinearBase`: their own parameters, loader and forward.

After loading, `prepare_linears` lets each weight take its backend's own layout: on a CPU in
float32, oneDNN's blocked layout and the skinny-GEMM panels of decode-sized rows
(`backends/cpu/linear.py`); a GGUF weight the loader kept quantized stays in its blocks and
runs through the CPU's quantized kernels (`backends/cpu/gguf_linear.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ....loaders.gguf_file import QuantizedWeight
from ..backends.cpu import gguf_linear
from ..backends.cpu.linear import PackedLinear, can_pack

ShardId = int | str


class LinearBase(nn.Module):
    """y = x W^T + b, W [output_size, input_size]."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        self.register_parameter("bias", nn.Parameter(torch.empty(output_size)) if bias else None)
        self.packed: PackedLinear | gguf_linear.GGUFLinear | None = None
        # GGUF blocks the loader kept quantized, by shard id (None: the weight whole), until
        # `prepare_linears` turns them into a GGUFLinear.
        self.quantized: dict[ShardId | None, QuantizedWeight] = {}
        # Output rows of each checkpoint tensor packed in this weight, by shard id (the row
        # slice it fills); empty for a weight loaded whole.
        self.shards: dict[ShardId, tuple[int, int]] = {}

    def weight_loader(
        self,
        param: nn.Parameter,
        loaded: torch.Tensor | QuantizedWeight,
        shard_id: ShardId | None = None,
    ) -> None:
        if isinstance(loaded, QuantizedWeight):
            if param is self.weight and not (shard_id is None and self.shards):
                self.quantized[shard_id] = loaded
                return
            loaded = loaded.dequantize()
        if shard_id is None and self.shards:
            # The checkpoint stores this packed weight whole (Phi-3's qkv_proj, InternLM2's
            # wqkv): each shard goes in by its own path, where a tensor-parallel split will
            # take its rank's rows.
            for part_id, part in self.split_packed(loaded).items():
                self.weight_loader(param, part, part_id)
            return
        if shard_id is None:
            param.data.copy_(loaded)
            return
        start, size = self.shards[shard_id]
        param.data[start : start + size].copy_(loaded)

    def split_packed(self, loaded: torch.Tensor) -> dict[ShardId, torch.Tensor]:
        """A whole packed checkpoint tensor (weight or bias) cut into its shards, which it
        holds one after another in shard order."""
        sizes = [size for _, size in self.shards.values()]
        return dict(zip(self.shards, loaded.split(sizes), strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(x)
        return F.linear(x, self.weight, self.bias)

    def pack(self) -> None:
        """Keep the weight only in the CPU's packed layout (one copy of each matrix)."""
        self.packed = PackedLinear(self.weight, self.bias)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def pack_quantized(self) -> bool:
        """Run on the GGUF blocks the loader kept (all shards of one type the kernels read);
        False, with them dequantized into the weight, where they can't."""
        parts = [self.quantized[s] for s in (self.shards or [None])]
        self.quantized = {}
        kinds = {part.qtype for part in parts}
        if len(kinds) == 1 and gguf_linear.supports(parts[0].qtype, self.input_size):
            blocks = torch.cat([part.blocks for part in parts])
            self.packed = gguf_linear.GGUFLinear(blocks, parts[0].qtype, self.bias)
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
            return True
        # Mixed types (a Q4_K_M file's Q6_K value rows beside Q4_K query rows): float32.
        for shard_id, part in zip(self.shards or [None], parts, strict=True):
            self.weight_loader(self.weight, part.dequantize(), shard_id)
        return False


class ColumnParallelLinear(LinearBase):
    """Outputs split across tensor-parallel ranks (whole at tp=1)."""


class RowParallelLinear(LinearBase):
    """Inputs split across tensor-parallel ranks, partial sums all-reduced (whole at tp=1)."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate and up): shard i fills the i-th."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__(input_size, sum(output_sizes), bias)
        starts = [sum(output_sizes[:i]) for i in range(len(output_sizes))]
        self.shards = {
            i: (start, size)
            for i, (start, size) in enumerate(zip(starts, output_sizes, strict=True))
        }


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections in one matmul: shards 'q', 'k', 'v', in that order."""

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False
    ) -> None:
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, q_size + 2 * kv_size, bias)
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.shards = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}


class GroupedQKVParallelLinear(QKVParallelLinear):
    """Q/K/V whose checkpoint packs them by KV group (InternLM2's wqkv): for each KV head, the
    query heads that share it, then that key head, then that value head. Loaded into the
    [q; k; v] layout of `QKVParallelLinear`, so attention and tensor parallelism see no
    difference."""

    def split_packed(self, loaded: torch.Tensor) -> dict[ShardId, torch.Tensor]:
        groups = loaded.unflatten(0, (self.num_kv_heads, -1, self.head_dim))
        return {
            "q": groups[:, :-2].flatten(0, 2),
            "k": groups[:, -2].flatten(0, 1),
            "v": groups[:, -1].flatten(0, 1),
        }


def prepare_linears(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """After loading: each linear takes its backend's weight layout, where there is one."""
    packable = can_pack(device, dtype)
    for module in list(model.modules()):
        if getattr(module, "quantized", None) and module.pack_quantized():
            continue
        if packable and callable(getattr(module, "pack", None)):  # a linear, or a tied LM head
            module.pack()
