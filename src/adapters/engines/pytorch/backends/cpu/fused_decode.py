"""A one-row decode step's decoder layers in one C call (`csrc/fused_decode.c`).

One sequence decoding one token on the CPU spends a quarter of its step on host work: ~10
kernel calls a layer through ctypes and torch glue, each an OpenMP fork/join. This runs all
the layers of a Llama-layout model (RMSNorm, q/k/v, rotary + K/V write, decode attention, o,
RMSNorm, gate/up, SiLU-and-mul, down) in one parallel region, calling the same C kernels'
units of work, so the result is the layer-by-layer path's up to the order of float sums.

`DecodeLayers` is built once per engine from the layers' tensors (pointers gathered then);
`supports_linear` says which linears its kernels read: GGUF blocks of the float-activation
kernel and float32 skinny-GEMM panels, without bias. With `repack` (and AVX-512), a Q4_0/Q4_1
linear whose output rows are a multiple of 16 is read from a copy of its blocks repacked 16
rows a group (`gguf_repack`, ~1.6x faster one-row GEMVs); the copy lives beside the blocks,
which prefill and batched decode still read.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch
from torch import nn

from . import build, gguf_float, gguf_repack, skinny_gemm
from .attention import cpu_decode_kernel_available
from .gguf_linear import GGUFLinear
from .linear import PackedLinear

_i64, _ptr, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_F32_PANELS = 0  # a linear's kind in the C plan; else its GGML block type, or _REPACKED | it
_REPACKED = 256


class _Linear(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("pad", ctypes.c_int32), ("weight", _ptr)]
    _fields_ += [("n", _i64), ("k", _i64)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", _ptr), ("post_norm", _ptr)]
    _fields_ += [(name, _Linear) for name in ("qkv", "o", "gate_up", "down")]
    _fields_ += [("k_cache", _ptr), ("v_cache", _ptr)]


_PARTS = ("gguf_columns", "transpose", "panels", "norm", "rotary", "silu", "attend")
_PARTS += ("repack_columns",)
_SIZES = ("num_layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "block_size")


class _Model(ctypes.Structure):
    _fields_ = [(name, _ptr) for name in _PARTS] + [(name, _i64) for name in _SIZES]
    _fields_ += [("eps", _f32), ("scale", _f32), ("layers", ctypes.POINTER(_Layer))]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's tensors and linears, and its K/V caches."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: nn.Module
    o: nn.Module
    gate_up: nn.Module
    down: nn.Module
    k_cache: torch.Tensor
    v_cache: torch.Tensor


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    block_size: int
    eps: float
    scale: float


def _address(lib: ctypes.CDLL | None, name: str) -> int:
    return ctypes.cast(getattr(lib, name), _ptr).value


@functools.cache
def _parts() -> dict[str, int] | None:
    """The other kernels' units of work, by the plan's field name (None: one can't be built)."""
    libs = {name: build.load(name) for name in ("gguf_float", "skinny_gemm", "cpu_ops")}
    libs["attention"] = build.load("paged_decode_attention")
    if any(lib is None for lib in libs.values()):
        return None
    symbols = {
        "gguf_columns": ("gguf_float", "gguf_float_columns"),
        "transpose": ("skinny_gemm", "skinny_transpose_f32"),
        "panels": ("skinny_gemm", "skinny_panels_f32"),
        "norm": ("cpu_ops", "add_rms_norm_row_f32"),
        "rotary": ("cpu_ops", "rotary_write_kv_row_f32"),
        "silu": ("cpu_ops", "silu_and_mul_columns_f32"),
        "attend": ("attention", "paged_decode_attend_f32"),
    }
    parts = {field: _address(libs[lib], symbol) for field, (lib, symbol) in symbols.items()}
    # Optional: without AVX-512 no linear is repacked and the plan never calls it.
    repack = gguf_repack.library() if gguf_repack.gemv_available() else None
    parts["repack_columns"] = _address(repack, "gguf_repack_columns") if repack else None
    return parts


@functools.cache
def _entry():
    lib = build.load("fused_decode")
    if lib is None or _parts() is None:
        return None
    fn = lib.fused_decode_layers_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [_ptr] * 7 + [_i64, ctypes.c_int]
    return fn


def available() -> bool:
    """Whether the kernels build here (a compiler, `LMDEPLOY_CPU_KERNELS` not 0, AVX2 for the
    float32 panels' library)."""
    return (
        skinny_gemm.available()
        and cpu_decode_kernel_available()
        and gguf_float.available()
        and _entry() is not None
    )


def supports_linear(linear: nn.Module) -> bool:
    """Whether `linear` (a layer's `packed` kernel module) is one this step reads."""
    if isinstance(linear, GGUFLinear):
        return (
            linear.bias is None
            and not linear.int8_activations
            and linear.qtype in gguf_float.TYPE_IDS
        )
    if isinstance(linear, PackedLinear):
        return linear.bias is None and linear.panels is not None
    return False


def _repackable(linear: nn.Module) -> bool:
    return (
        isinstance(linear, GGUFLinear)
        and gguf_repack.gemv_available()
        and gguf_repack.supports(linear.qtype, linear.out_features, linear.in_features)
    )


def _linear(linear: nn.Module, repack: bool) -> tuple[_Linear, torch.Tensor]:
    """The plan's entry for `linear`, and the tensor it points into."""
    if repack and _repackable(linear):
        kind = _REPACKED | gguf_repack.TYPE_IDS[linear.qtype]
        weight = gguf_repack.repack(linear.blocks, linear.qtype, linear.out_features)
    elif isinstance(linear, GGUFLinear):
        kind, weight = gguf_float.TYPE_IDS[linear.qtype], linear.blocks
    else:
        kind, weight = _F32_PANELS, linear.panels
    entry = _Linear(kind, 0, weight.data_ptr(), linear.out_features, linear.in_features)
    return entry, weight


class DecodeLayers:
    """Every decoder layer of one sequence's decode step, in one C call. The plan holds
    pointers into the given tensors: they must outlive it and stay where they are (the
    engine's weights and caches do)."""

    def __init__(
        self, shape: DecoderShape, layers: list[LayerWeights], repack: bool = True
    ) -> None:
        assert available() and all(
            supports_linear(getattr(layer, name))
            for layer in layers
            for name in ("qkv", "o", "gate_up", "down")
        ), "check available() and supports_linear() first"
        self.shape = shape
        linears = [
            [_linear(getattr(layer, name), repack) for name in ("qkv", "o", "gate_up", "down")]
            for layer in layers
        ]
        self._layers = (_Layer * len(layers))(
            *(
                _Layer(
                    layer.input_norm.data_ptr(),
                    layer.post_norm.data_ptr(),
                    *(entry for entry, _ in entries),
                    layer.k_cache.data_ptr(),
                    layer.v_cache.data_ptr(),
                )
                for layer, entries in zip(layers, linears, strict=True)
            )
        )
        # The repacked copies (and every other pointed-to tensor) live as long as the plan.
        self._weights = [weight for entries in linears for _, weight in entries]
        self.num_repacked = sum(
            entry.kind & _REPACKED != 0 for entries in linears for entry, _ in entries
        )
        sizes = (len(layers), shape.hidden, shape.heads, shape.kv_heads, shape.head_dim)
        sizes += (shape.inter, shape.block_size)
        self._model = _Model(
            *(_parts()[name] for name in _PARTS),
            *sizes,
            shape.eps,
            shape.scale,
            self._layers,
        )
        self._layer_weights = layers  # keeps the norms and caches alive with the plan

    def __call__(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slot: torch.Tensor,
        block_table: torch.Tensor,
        context_len: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h: the token's embeddings [1, hidden] (overwritten); cos, sin: its position's
        rotary rows [1, head_dim]; slot: [1] int64, its cache slot; block_table: the
        sequence's [1, blocks] int64; context_len: tokens in the cache with this one.
        Returns (the last layer's MLP output, the residual stream before it), as the model's
        layers do, for its final norm."""
        # Locals: a temporary's memory would be freed before the call reads it.
        h, cos, sin, block_table = (
            h.contiguous(),
            cos.contiguous(),
            sin.contiguous(),
            block_table.contiguous(),
        )
        residual = torch.zeros(h.shape)  # 0 + x == x: the first layer's sum is its input
        status = _entry()(
            ctypes.byref(self._model),
            h.data_ptr(),
            residual.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            slot.data_ptr(),
            block_table.data_ptr(),
            context_len,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("fused_decode_layers_f32: out of memory for its scratch buffers")
        return h, residual
