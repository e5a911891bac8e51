"""Linears over GGUF's quantized blocks on the CPU.

A GGUF file's Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K weights stay in memory as the file stores them
(4.5 to 8.5 bits a weight, against float32's 32): a decode step reads 4-7x fewer bytes, and the
server holds the model in a fraction of the memory. `GGUFLinear` runs by default on float32
activations (`gguf_float.py`, Q4_0 / Q4_1 / Q8_0: the float32 path's result up to summation
order). With `int8_activations` (`gguf_int_kernels`), each call quantizes the activations per
row to 8-bit blocks as llama.cpp does (`q8` blocks of 32 for the first three types, `q8_K`
blocks of 256 for the k-quants) and takes integer dot products against the blocks
(`csrc/gguf_quants.c`, `csrc/gguf_kquants.c`); the result differs from the float32 path by that
activation rounding (relative ~1e-2 per output, as llama.cpp's own CPU path does).

`available()` is False without a compiler, without AVX2/FMA/F16C, or with
`LMDEPLOY_CPU_KERNELS=0`; the loader then dequantizes to float32 as before.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import build, gguf_float

# GGML type name -> its type id, for the types the kernels read.
TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
# GGML type name -> (weights along K, bytes) of one of its blocks (ggml-common.h).
BLOCKS = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q6_K": (256, 210),
}
QK_K = 256  # the k-quants' super-block
# The activations' blocks, by the weights' block length: `q8_block` (float d, float s, 32 int8)
# and `q8k_block` (float d, 256 int8, 16 int16 sums) in the C sources.
_ACTIVATION_BLOCK_BYTES = {32: 40, QK_K: 292}
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
# The C calls' arguments, the same in both sources.
_MATMUL_ARGS = [_int, _ptr, _i64, _i64, _ptr, _i64, _ptr, _i64, _int]
_DEQUANTIZE_ARGS = [_int, _ptr, _i64, _ptr, _i64, _ptr]
_QUANTIZE_ARGS = [_ptr, _i64, _i64, _i64, _ptr, _int]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())


def _declare(fn, argtypes: list, restype=_int) -> None:  # noqa: ANN001 -- a ctypes function
    fn.argtypes, fn.restype = argtypes, restype


@dataclass(frozen=True)
class Kernels:
    """The two built sources, with the same calls: blocks of 32 and the k-quants'."""

    blocks: ctypes.CDLL
    kquants: ctypes.CDLL

    def quantize(self, values: int):  # noqa: ANN201 -- a ctypes function
        """The activations' quantizer for weights of `values` along K a block."""
        if values == QK_K:
            return self.kquants.gguf_quantize_rows_q8_k
        return self.blocks.gguf_quantize_rows_q8

    def matmul(self, qtype: str):  # noqa: ANN201
        if BLOCKS[qtype][0] == QK_K:
            return self.kquants.gguf_kquant_matmul
        return self.blocks.gguf_matmul

    def dequantize_rows(self, qtype: str):  # noqa: ANN201
        if BLOCKS[qtype][0] == QK_K:
            return self.kquants.gguf_kquant_dequantize_rows
        return self.blocks.gguf_dequantize_rows

    def uses_vnni(self) -> bool:
        """Whether the VNNI paths were compiled in (both sources build alike)."""
        return bool(self.blocks.gguf_uses_vnni()) and bool(self.kquants.gguf_kquant_uses_vnni())


@functools.cache
def library(extra_flags: tuple[str, ...] = ()) -> Kernels | None:
    """The built kernels; `extra_flags` build a variant (tests: the AVX2 path on a VNNI CPU)."""
    if not {"avx2", "fma", "f16c"} <= _cpu_flags():
        return None
    blocks = build.load("gguf_quants", extra_flags)
    kquants = build.load("gguf_kquants", extra_flags)
    if blocks is None or kquants is None:
        return None
    _declare(blocks.gguf_quantize_rows_q8, _QUANTIZE_ARGS, None)
    _declare(blocks.gguf_matmul, _MATMUL_ARGS)
    _declare(blocks.gguf_dequantize_rows, _DEQUANTIZE_ARGS)
    _declare(blocks.gguf_uses_vnni, [])
    _declare(kquants.gguf_quantize_rows_q8_k, _QUANTIZE_ARGS, None)
    _declare(kquants.gguf_kquant_matmul, _MATMUL_ARGS)
    _declare(kquants.gguf_kquant_dequantize_rows, _DEQUANTIZE_ARGS)
    _declare(kquants.gguf_kquant_uses_vnni, [])
    return Kernels(blocks, kquants)


def available() -> bool:
    return library() is not None


def supports(qtype: str, in_features: int) -> bool:
    """Whether a weight of this type and row length can stay quantized here."""
    return qtype in TYPE_IDS and in_features % BLOCKS[qtype][0] == 0 and available()


def quantize_activations(x: torch.Tensor, values: int, lib: Kernels | None = None) -> torch.Tensor:
    """x [rows, K] float32 (unit stride along K) as the activation blocks of weights whose
    blocks hold `values` along K: q8 blocks of 32, or q8_K blocks of 256 for the k-quants."""
    lib = lib or library()
    rows, k = x.shape
    xq = torch.empty(rows * (k // values) * _ACTIVATION_BLOCK_BYTES[values], dtype=torch.uint8)
    lib.quantize(values)(x.data_ptr(), x.stride(0), rows, k, xq.data_ptr(), torch.get_num_threads())
    return xq


def matmul_into(
    y: torch.Tensor,
    xq: torch.Tensor,
    k: int,
    blocks: torch.Tensor,
    qtype: str,
    lib: Kernels | None = None,
) -> None:
    """y [rows, out_features] (any row stride, unit column stride) = x @ W^T, x given as
    `quantize_activations` made it and W as GGUF blocks [out_features, bytes]."""
    lib = lib or library()
    rows, n = y.shape
    lib.matmul(qtype)(
        TYPE_IDS[qtype], blocks.data_ptr(), n, k, xq.data_ptr(), rows, y.data_ptr(), y.stride(0),
        torch.get_num_threads(),
    )  # fmt: skip


def kernel_supports(qtype: str, in_features: int, int8_activations: bool) -> bool:
    """Whether a GGUFLinear of this type and row length can run on the chosen kernel."""
    return (supports if int8_activations else gguf_float.supports)(qtype, in_features)


def matmul(
    x: torch.Tensor, blocks: torch.Tensor, qtype: str, out_features: int, lib: Kernels | None = None
) -> torch.Tensor:
    """x [rows, K] float32 @ W^T -> [rows, out_features], W as GGUF blocks [out_features, bytes]."""
    lib = lib or library()
    if x.stride(1) != 1:
        x = x.contiguous()
    xq = quantize_activations(x, BLOCKS[qtype][0], lib)
    y = torch.empty(x.shape[0], out_features)
    matmul_into(y, xq, x.shape[1], blocks, qtype, lib)
    return y


def dequantize_rows(
    blocks: torch.Tensor,
    qtype: str,
    in_features: int,
    index: torch.Tensor,
    lib: Kernels | None = None,
) -> torch.Tensor:
    """Rows `index` of W (GGUF blocks [rows, bytes]) as float32 [len(index), in_features]."""
    lib = lib or library()
    index = index.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(index.numel(), in_features)
    lib.dequantize_rows(qtype)(
        TYPE_IDS[qtype], blocks.data_ptr(), in_features, index.data_ptr(), index.numel(),
        out.data_ptr(),
    )  # fmt: skip
    return out


class GGUFLinear(nn.Module):
    """`y = x W^T + b` with W kept as GGUF blocks (uint8 [out_features, bytes per row]): float32
    activations against blocks dequantized in registers (`gguf_float`), or, with
    `int8_activations`, this module's integer kernels on activations rounded to 8 bits."""

    def __init__(
        self,
        blocks: torch.Tensor,
        qtype: str,
        bias: torch.Tensor | None,
        int8_activations: bool = False,
    ) -> None:
        super().__init__()
        self.blocks, self.qtype = blocks.contiguous(), qtype
        self.out_features = blocks.shape[0]
        values, nbytes = BLOCKS[qtype]
        self.in_features = blocks.shape[1] // nbytes * values
        self.bias = None if bias is None else bias.detach()
        self.int8_activations = int8_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:  # the model's rows are 2-D: no reshape (two ops a call) for them
            return self.forward(x.reshape(-1, self.in_features)).unflatten(0, x.shape[:-1])
        if not self.int8_activations:
            return gguf_float.matmul(x, self.blocks, self.qtype, self.out_features, self.bias)
        y = matmul(x, self.blocks, self.qtype, self.out_features)
        return y if self.bias is None else y.add_(self.bias)

    def extra_repr(self) -> str:
        kernel = "int8 activations" if self.int8_activations else "float activations"
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qtype}, {kernel}"


class MixedGGUFLinear(nn.Module):
    """`y = x W^T + b` with W's output rows in runs of different GGUF types: a fused q/k/v or
    gate/up whose checkpoint tensors differ in type (llama.cpp's Q4_K_M gives some layers' v
    Q6_K beside Q4_K q and k). Each run writes its columns of one output; the activations are
    quantized once per block length the runs need."""

    def __init__(self, parts: list[tuple[str, torch.Tensor]], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.parts = [(qtype, blocks.contiguous()) for qtype, blocks in parts]
        self.qtypes = tuple(qtype for qtype, _ in self.parts)
        self.out_features = sum(blocks.shape[0] for _, blocks in self.parts)
        values, nbytes = BLOCKS[self.qtypes[0]]
        self.in_features = self.parts[0][1].shape[1] // nbytes * values
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.stride(1) != 1:
            rows = rows.contiguous()
        y = torch.empty(rows.shape[0], self.out_features)
        quantized: dict[int, torch.Tensor] = {}
        start = 0
        for qtype, blocks in self.parts:
            values = BLOCKS[qtype][0]
            if values not in quantized:
                quantized[values] = quantize_activations(rows, values)
            end = start + blocks.shape[0]
            matmul_into(y[:, start:end], quantized[values], self.in_features, blocks, qtype)
            start = end
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qtypes}"


QuantizedLinear = GGUFLinear | MixedGGUFLinear


def linear(
    parts: list[tuple[str, torch.Tensor]],
    bias: torch.Tensor | None,
    int8_activations: bool = False,
) -> QuantizedLinear:
    """The linear over GGUF blocks stacked along the outputs, in order (qtype, blocks): one
    `GGUFLinear` where they share a type, else a `MixedGGUFLinear` over runs of one type (on
    the int8-activation kernels only)."""
    runs: list[tuple[str, list[torch.Tensor]]] = []
    for qtype, blocks in parts:
        if runs and runs[-1][0] == qtype:
            runs[-1][1].append(blocks)
        else:
            runs.append((qtype, [blocks]))
    merged = [(qtype, torch.cat(blocks)) for qtype, blocks in runs]
    if len(merged) == 1:
        return GGUFLinear(merged[0][1], merged[0][0], bias, int8_activations)
    assert int8_activations, "types mixed in one linear run on the int8-activation kernels only"
    return MixedGGUFLinear(merged, bias)
