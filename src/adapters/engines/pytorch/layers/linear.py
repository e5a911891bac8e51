"""The linears of every model, and the seam where other kinds plug in.

vLLM's family: `ColumnParallelLinear` splits its outputs across tensor-parallel ranks,
`RowParallelLinear` its inputs (one all-reduce after it), `QKVParallelLinear` and
`MergedColumnParallelLinear` hold several checkpoint tensors packed along the output dimension.
Each owns a `weight_loader(param, loaded, shard_id)` that places this rank's slice of one
checkpoint tensor (a shard of a packed weight, by its `shard_id`) in its parameter; the generic
loader (`models/weights.py`) calls it, for a dense weight and for every tensor of a quantized
one alike, so no rank ever holds a whole weight of the model. Sizes given to the constructors
are the model's (global); the parameters are this rank's.

What a linear holds and how it multiplies is its `method`, chosen by the checkpoint's
quantization (`quantization/`, whose docstring is the contract for adding one). Quantized
checkpoints run at tp=1 (the builder refuses more): `rank_slice` cuts dense layouts only.

After loading, `prepare_linears` lets each weight take its backend's own layout: on a CPU in
float32, oneDNN's blocked layout and the skinny-GEMM panels of decode-sized rows
(`backends/cpu/linear.py`); a GGUF weight the loader kept quantized stays in its blocks and
runs through the CPU's quantized kernels (`backends/cpu/gguf_linear.py`: float32 activations
by default, int8 ones on request). On CUDA, with `decode_gemv`, each dense shape's one-row
product is timed against cuBLAS there and takes the decode GEMV where it is faster
(`backends/cuda/linear.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ....loaders.gguf_file import QuantizedWeight
from ..backends import triton_runs_on
from ..backends.cpu import gguf_linear
from ..backends.cpu.linear import PackedLinear, can_pack
from ..backends.normed_input import NormedInput
from ..distributed.parallel_state import (
    all_reduce,
    divide,
    kv_head_of_rank,
    local_kv_heads,
    tp_rank,
    tp_size,
)
from .quantization import LinearMethod, QuantConfig, UnquantizedLinearMethod

ShardId = int | str


class LinearBase(nn.Module):
    """y = x W^T + b, W [output_size, input_size], held and applied by its `method`: dense
    without a `quant_config`, else the checkpoint's quantization (`quantization/`).

    Replicated on every rank (e.g. a router) unless a subclass sets `tp_dim`, the dimension of
    W split across ranks (0: outputs, 1: inputs); `input_size`/`output_size` are this rank's."""

    tp_dim: int | None = None

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        quant_config: QuantConfig | None = None,
    ) -> None:
        super().__init__()
        if self.tp_dim == 0:
            output_size = divide(output_size, f"output features of {type(self).__name__}")
        elif self.tp_dim == 1:
            input_size = divide(input_size, f"input features of {type(self).__name__}")
        self.input_size, self.output_size = input_size, output_size
        self.packed: PackedLinear | gguf_linear.QuantizedLinear | None = None
        # GGUF blocks the loader kept quantized, by shard id (None: the weight whole), until
        # `prepare_linears` turns them into a quantized linear (`gguf_linear.linear`).
        self.quantized: dict[ShardId | None, QuantizedWeight] = {}
        # Output rows of each checkpoint tensor packed in this weight, by shard id (the row
        # slice of this rank's weight it fills); empty for a weight loaded whole.
        self.shards: dict[ShardId, tuple[int, int]] = {}
        # Rows of each shard in the checkpoint's whole tensor (all ranks'), to cut one apart.
        self.full_sizes: dict[ShardId, int] = {}
        # Per parameter name: (its output-feature dim, features per element); see quantization/.
        self.output_dims: dict[str, tuple[int, int]] = {}
        # Floating-point parameters that keep their own dtype when the model is cast to the
        # compute dtype (a float8 weight, an fp32 scale), by name; set by the method.
        self.keep_dtypes: dict[str, torch.dtype] = {}
        self.method: LinearMethod = (
            quant_config.linear_method() if quant_config else UnquantizedLinearMethod()
        )
        self.method.create_weights(self, bias)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 -- nn.Module's signature
        """`model.to(dtype)` casts every floating parameter; those in `keep_dtypes` are cast
        back (the build casts on the meta device, before loading, so nothing is lost)."""
        super()._apply(fn, recurse)
        for name, dtype in self.keep_dtypes.items():
            param = self._parameters.get(name)
            if param is not None and param.dtype != dtype:
                self._parameters[name] = nn.Parameter(param.data.to(dtype), requires_grad=False)
        return self

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
        layout = self.output_dims.get(self._name_of(param))
        if shard_id is None and self.shards and layout is not None:
            # The checkpoint stores this packed weight whole (Phi-3's qkv_proj, InternLM2's
            # wqkv): each shard goes in by its own path, where a tensor-parallel split will
            # take its rank's rows.
            for part_id, part in self.split_packed(loaded, *layout).items():
                self.weight_loader(param, part, part_id)
            return
        loaded = self.rank_slice(loaded, shard_id)
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

    def rank_slice(self, loaded: torch.Tensor, shard_id: ShardId | None) -> torch.Tensor:
        """This rank's part of a checkpoint tensor: its block along `tp_dim` (a bias is split
        only with the outputs; a row-parallel bias is added once, after the all-reduce)."""
        dim = self.tp_dim
        if dim is None or tp_size() == 1 or dim >= loaded.dim():
            return loaded
        return loaded.chunk(tp_size(), dim)[tp_rank()]

    def split_packed(
        self, loaded: torch.Tensor, dim: int = 0, pack: int = 1
    ) -> dict[ShardId, torch.Tensor]:
        """A whole packed checkpoint tensor (weight or bias) cut into its shards, which it
        holds one after another in shard order along `dim` (`pack` features an element)."""
        sizes = [self.full_sizes[s] // pack for s in self.shards]
        return dict(zip(self.shards, loaded.split(sizes, dim), strict=True))

    def kernel_bias(self) -> torch.Tensor | None:
        """The bias the matmul itself adds."""
        return self.bias

    def forward(self, x: torch.Tensor | NormedInput) -> torch.Tensor:
        if isinstance(x, NormedInput):  # a linked norm's row: normalised in the GEMV's K loop
            from ..backends.cuda.gemv_epilogues import project_normed  # Triton: where it runs

            return project_normed(self, x)
        if self.packed is not None:
            # Its forward directly: hooks (LoRA's) sit on this module, not on the kernel's, and
            # nn.Module's call machinery is Python work on every linear of every step.
            return self.packed.forward(x)
        return self.method.apply(self, x)

    def pack(self) -> None:
        """Keep the weight only in the CPU's packed layout (one copy of each matrix)."""
        self.packed = PackedLinear(self.weight, self.bias)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def pack_quantized(self, int8_activations: bool = False) -> bool:
        """Run on the GGUF blocks the loader kept (every shard of a type the chosen kernel
        reads; types mixed only on the int8-activation kernels); False, with them dequantized
        into the weight, where they can't."""
        parts = [self.quantized[s] for s in (self.shards or [None])]
        self.quantized = {}
        mixed = len({part.qtype for part in parts}) > 1
        runnable = all(
            gguf_linear.kernel_supports(part.qtype, self.input_size, int8_activations)
            for part in parts
        )
        if runnable and (int8_activations or not mixed):
            blocks = [(part.qtype, part.blocks) for part in parts]
            self.packed = gguf_linear.linear(blocks, self.bias, int8_activations)
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
            return True
        for shard_id, part in zip(self.shards or [None], parts, strict=True):
            self.weight_loader(self.weight, part.dequantize(), shard_id)
        return False


class ColumnParallelLinear(LinearBase):
    """Outputs split across tensor-parallel ranks (whole at tp=1)."""

    tp_dim = 0


@dataclass(frozen=True)
class PendingProjection:
    """`linear(x)` of one row, not yet run, handed to the RMSNorm that adds it to the residual
    stream: the norm runs it with the add in the GEMV's epilogue (`plus`), a launch less."""

    linear: LinearBase
    x: torch.Tensor

    def plus(self, residual: torch.Tensor | None) -> torch.Tensor:
        """linear(x) + residual (linear(x) alone without one)."""
        if residual is None:
            return self.linear.method.apply(self.linear, self.x)
        from ..backends.cuda.gemv_epilogues import project_add_residual  # Triton: where it runs

        return project_add_residual(self.linear, self.x, residual)


class RowParallelLinear(LinearBase):
    """Inputs split across tensor-parallel ranks, partial sums all-reduced (whole at tp=1);
    the bias, whole on every rank, is added after the sum."""

    tp_dim = 1
    # Set by `norm.link_norms` where only an RMSNorm's residual add reads the output at tp=1.
    feeds_residual_add = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | PendingProjection:
        if tp_size() == 1:
            if self.feeds_residual_add and self._defers(x):
                return PendingProjection(self, x)
            return super().forward(x)
        if self.packed is not None:
            return all_reduce(self.packed.forward(x))
        method = self.method
        assert isinstance(method, UnquantizedLinearMethod), "quantized checkpoints run at tp=1"
        out = all_reduce(method.kernel(x, self.weight, None))
        return out if self.bias is None else out + self.bias

    def _defers(self, x: torch.Tensor) -> bool:
        """A one-row product for the unsplit Triton GEMV that nothing else sees (no hooks:
        LoRA's)."""
        if x.numel() != x.shape[-1] or not triton_runs_on(x):
            return False
        from ..backends.cuda.gemv_epilogues import gemv_of_call  # Triton: where it runs

        return gemv_of_call(self, x) is not None

    def kernel_bias(self) -> torch.Tensor | None:
        return None if tp_size() > 1 else self.bias  # at tp > 1, added after the all-reduce

    def pack(self) -> None:
        if tp_size() > 1 and self.bias is not None:
            return  # the packed kernel adds the bias on every rank: keep the plain path
        super().pack()


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
        local = [divide(size, "intermediate features") for size in output_sizes]
        starts = [sum(local[:i]) for i in range(len(local))]
        self.shards = {
            i: (start, size) for i, (start, size) in enumerate(zip(starts, local, strict=True))
        }
        self.full_sizes = dict(enumerate(output_sizes))


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections in one matmul: shards 'q', 'k', 'v', in that order.
    Split by heads: each rank its query heads and their KV heads (one KV head replicated on
    several ranks when there are fewer KV heads than ranks)."""

    tp_dim = None  # split by heads in `rank_slice`, not in equal blocks of the packed rows

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        quant_config: QuantConfig | None = None,
    ) -> None:
        kv_local = local_kv_heads(num_heads, num_kv_heads)
        q_size, kv_size = num_heads // tp_size() * head_dim, kv_local * head_dim
        super().__init__(hidden_size, q_size + 2 * kv_size, bias, quant_config)
        self.head_dim, self.num_kv_heads, self.kv_local = head_dim, num_kv_heads, kv_local
        self.shards = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}
        full_kv = num_kv_heads * head_dim
        self.full_sizes = {"q": num_heads * head_dim, "k": full_kv, "v": full_kv}
        self.local_sizes = [q_size, kv_size, kv_size]  # split the output into q, k, v

    def rank_slice(self, loaded: torch.Tensor, shard_id: ShardId | None) -> torch.Tensor:
        if tp_size() == 1 or shard_id is None:
            return loaded
        if shard_id == "q":
            return loaded.chunk(tp_size(), 0)[tp_rank()]
        first = kv_head_of_rank(self.num_kv_heads) * self.head_dim
        return loaded[first : first + self.kv_local * self.head_dim]


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


def prepare_linears(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    pack: bool = True,
    gguf_int8: bool = False,
    decode_gemv: bool = False,
) -> None:
    """After loading: each linear takes its method's layout on `device` (a quantized one may
    turn dense), then GGUF blocks their kernel (float32 activations, or with `gguf_int8` the
    int8-activation one), then the backend's own dense weight layout, where there is one and
    the platform keeps one (`pack`). With `decode_gemv`, on CUDA, each dense shape's one-row
    kernel is chosen by timing (every tensor-parallel rank must pass the same flag)."""
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.method.process_weights_after_loading(module, device)
    packable = pack and can_pack(device, dtype)
    for module in list(model.modules()):
        if getattr(module, "quantized", None) and module.pack_quantized(gguf_int8):
            continue
        if isinstance(module, LinearBase) and not isinstance(
            module.method, UnquantizedLinearMethod
        ):
            continue  # a quantized weight that stays so: its method's kernel runs it
        if packable and callable(getattr(module, "pack", None)):  # a linear, or a tied LM head
            module.pack()
    if decode_gemv and device.type == "cuda":
        _choose_decode_gemvs(model)


def _choose_decode_gemvs(model: nn.Module) -> None:
    """Give each dense linear the one-row kernel timed fastest for its shape, and the q/k/v
    and gate/up projections that run the GEMV their one-launch epilogue where it times faster."""
    from ..backends.cuda.gemv_epilogues import choose_epilogues  # Triton: only where it runs
    from ..backends.cuda.linear import choose_decode_gemvs

    dense = [
        m
        for m in model.modules()
        if isinstance(m, LinearBase)
        and isinstance(m.method, UnquantizedLinearMethod)
        and m.packed is None
    ]
    kernels = choose_decode_gemvs([(m.weight, m.kernel_bias()) for m in dense])
    for module, kernel in zip(dense, kernels, strict=True):
        if kernel is not None:
            module.method.kernel = kernel
    choose_epilogues(dense)


def fuse_input_quant(model: nn.Module, producers: Mapping[str, str]) -> list[str]:
    """Let each producer quantise its output where the linear reading it takes a quantised
    input (`LinearMethod.prequantized_input`: a W8A8 linear on its 8-bit kernel), so the
    linear's own per-token quantisation launch goes. `producers` maps a module name within a
    decoder layer to the name of the one linear that reads its output there (Llama's
    `input_layernorm` -> `self_attn.qkv_proj`); pairs whose modules are absent, or whose
    producer has no quantising kernel (`quantize_output`), are left as they are. A linear
    with a hook (LoRA) keeps its float input: the hook reads it. Returns the producers set."""
    modules = dict(model.named_modules())
    fused = []
    for name, producer in modules.items():
        for producer_name, linear_name in producers.items():
            if name != producer_name and not name.endswith("." + producer_name):
                continue
            linear = modules.get(name[: len(name) - len(producer_name)] + linear_name)
            if not isinstance(linear, LinearBase) or not hasattr(producer, "quantize_output"):
                continue
            dtype = linear.method.prequantized_input()
            if dtype is None or linear.packed is not None:
                continue
            if linear._forward_hooks or linear._forward_pre_hooks:
                continue
            producer.quantize_output(dtype)
            fused.append(name)
    return fused
