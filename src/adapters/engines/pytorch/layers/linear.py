"""The linears of every model, and the seam where other kinds plug in.

vLLM's family, with tensor parallelism at 1 for now: `ColumnParallelLinear` splits its outputs
across ranks, `RowParallelLinear` its inputs (one all-reduce after it), `QKVParallelLinear` and
`MergedColumnParallelLinear` hold several checkpoint tensors packed along the output dimension.
Each owns a `weight_loader(param, loaded, shard_id)` that places one checkpoint tensor (a shard
of a packed weight, by its `shard_id`) in its parameter; the generic loader
(`models/weights.py`) calls it, for a dense weight and for every tensor of a quantized one
alike. What a linear holds and how it multiplies is its `method`, chosen by the checkpoint's
quantization (`quantization/`, whose docstring is the contract for adding one); tensor-parallel
and LoRA linears subclass `LinearBase`.

After loading, `prepare_linears` lets each weight take its backend's own layout: on a CPU in
float32, oneDNN's blocked layout and the skinny-GEMM panels of decode-sized rows
(`backends/cpu/linear.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.cpu.linear import PackedLinear, can_pack
from .quantization import LinearMethod, QuantConfig, UnquantizedLinearMethod

ShardId = int | str


class LinearBase(nn.Module):
    """y = x W^T + b, W [output_size, input_size], held and applied by its `method`: dense
    without a `quant_config`, else the checkpoint's quantization (`quantization/`)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_config: QuantConfig | None = None,
    ) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.packed: PackedLinear | None = None
        # Output rows of each checkpoint tensor packed in this weight, by shard id (the row
        # slice it fills); empty for a weight loaded whole.
        self.shards: dict[ShardId, tuple[int, int]] = {}
        # Per parameter name: (its output-feature dim, features per element); see quantization/.
        self.output_dims: dict[str, tuple[int, int]] = {}
        self.method: LinearMethod = (
            quant_config.linear_method() if quant_config else UnquantizedLinearMethod()
        )
        self.method.create_weights(self, bias)

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId | None = None
    ) -> None:
        layout = self.output_dims.get(self._name_of(param))
        if shard_id is None and self.shards and layout is not None:
            # The checkpoint stores this packed weight whole (Phi-3's qkv_proj, InternLM2's
            # wqkv): each shard goes in by its own path, where a tensor-parallel split will
            # take its rank's rows.
            for part_id, part in self.split_packed(loaded, *layout).items():
                self.weight_loader(param, part, part_id)
            return
        if shard_id is None or layout is None:
            param.data.copy_(loaded)
            return
        dim, pack = layout
        start, size = self.shards[shard_id]
        if start % pack or size % pack:
            raise ValueError(
                f"shard {shard_id!r} (outputs {start}..{start + size}) does not fall on the "
                f"{pack}-feature elements of its packed parameter; this model's shapes cannot "
                f"be loaded in this format"
            )
        param.data.narrow(dim, start // pack, size // pack).copy_(loaded)

    def _name_of(self, param: nn.Parameter) -> str:
        return next(name for name, p in self._parameters.items() if p is param)

    def split_packed(
        self, loaded: torch.Tensor, dim: int = 0, pack: int = 1
    ) -> dict[ShardId, torch.Tensor]:
        """A whole packed checkpoint tensor (weight or bias) cut into its shards, which it
        holds one after another in shard order along `dim` (`pack` features an element)."""
        sizes = [size // pack for _, size in self.shards.values()]
        return dict(zip(self.shards, loaded.split(sizes, dim), strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(x)
        return self.method.apply(self, x)

    def pack(self) -> None:
        """Keep the weight only in the CPU's packed layout (one copy of each matrix)."""
        self.packed = PackedLinear(self.weight, self.bias)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)


class ColumnParallelLinear(LinearBase):
    """Outputs split across tensor-parallel ranks (whole at tp=1)."""


class RowParallelLinear(LinearBase):
    """Inputs split across tensor-parallel ranks, partial sums all-reduced (whole at tp=1)."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate and up): shard i fills the i-th."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        quant_config: QuantConfig | None = None,
    ) -> None:
        super().__init__(input_size, sum(output_sizes), bias, quant_config)
        starts = [sum(output_sizes[:i]) for i in range(len(output_sizes))]
        self.shards = {
            i: (start, size)
            for i, (start, size) in enumerate(zip(starts, output_sizes, strict=True))
        }


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections in one matmul: shards 'q', 'k', 'v', in that order."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        quant_config: QuantConfig | None = None,
    ) -> None:
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, q_size + 2 * kv_size, bias, quant_config)
        self.head_dim, self.num_kv_heads = head_dim, num_kv_heads
        self.shards = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}


class GroupedQKVParallelLinear(QKVParallelLinear):
    """Q/K/V whose checkpoint packs them by KV group (InternLM2's wqkv): for each KV head, the
    query heads that share it, then that key head, then that value head. Loaded into the
    [q; k; v] layout of `QKVParallelLinear`, so attention and tensor parallelism see no
    difference."""

    def split_packed(
        self, loaded: torch.Tensor, dim: int = 0, pack: int = 1
    ) -> dict[ShardId, torch.Tensor]:
        groups = loaded.movedim(dim, 0).unflatten(0, (self.num_kv_heads, -1, self.head_dim // pack))
        parts = {
            "q": groups[:, :-2].flatten(0, 2),
            "k": groups[:, -2].flatten(0, 1),
            "v": groups[:, -1].flatten(0, 1),
        }
        return {shard: part.movedim(0, dim) for shard, part in parts.items()}


def prepare_linears(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """After loading: each linear takes its method's layout on `device` (a quantized one may
    turn dense), then the backend's own weight layout, where there is one."""
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.method.process_weights_after_loading(module, device)
    if not can_pack(device, dtype):
        return
    for module in list(model.modules()):
        if isinstance(module, LinearBase) and not isinstance(
            module.method, UnquantizedLinearMethod
        ):
            continue  # a quantized weight that stays so: its method's kernel runs it
        if callable(getattr(module, "pack", None)):  # a LinearBase, or a tied LM head
            module.pack()
