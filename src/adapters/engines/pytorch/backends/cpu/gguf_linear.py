"""Linears over GGUF's quantized blocks on the CPU.

A GGUF file's Q4_0 / Q4_1 / Q8_0 weights stay in memory as the file stores them (4.5 to 8.5
bits a weight, against float32's 32): a decode step reads 6x fewer bytes, and the server holds
the default model in a fraction of the memory. `GGUFLinear` runs by default on float32
activations (`gguf_float.py`: the float32 path's result up to summation order). With
`int8_activations` (`gguf_int_kernels`), each call quantizes the activations to 8-bit blocks
per row (`q8`, llama.cpp's scheme) and takes integer dot products against the blocks
(`csrc/gguf_quants.c`); the result differs from the float32 path by that activation rounding
(relative ~1e-2 per output, as llama.cpp's own CPU path does).

`available()` is False without a compiler, without AVX2/FMA/F16C, or with
`LMDEPLOY_CPU_KERNELS=0`; the loader then dequantizes to float32 as before.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import nn

from . import build, gguf_float

# GGML type name -> its type id, for the types the kernels read.
TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}
BLOCK = 32
_Q8_BLOCK_BYTES = 40  # float d, float s, 32 int8 (`q8_block` in the C source)
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())


@functools.cache
def library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The built kernels; `extra_flags` build a variant (tests: the AVX2 path on a VNNI CPU)."""
    if not {"avx2", "fma", "f16c"} <= _cpu_flags():
        return None
    lib = build.load("gguf_quants", extra_flags)
    if lib is None:
        return None
    lib.gguf_quantize_rows_q8.restype = None
    lib.gguf_quantize_rows_q8.argtypes = [_ptr, _i64, _i64, _i64, _ptr, _int]
    lib.gguf_matmul.restype = _int
    lib.gguf_matmul.argtypes = [_int, _ptr, _i64, _i64, _ptr, _i64, _ptr, _i64, _int]
    lib.gguf_dequantize_rows.restype = _int
    lib.gguf_dequantize_rows.argtypes = [_int, _ptr, _i64, _ptr, _i64, _ptr]
    lib.gguf_uses_vnni.restype = _int
    return lib


def available() -> bool:
    return library() is not None


def supports(qtype: str, in_features: int) -> bool:
    """Whether a weight of this type and row length can stay quantized here."""
    return qtype in TYPE_IDS and in_features % BLOCK == 0 and available()


def kernel_supports(qtype: str, in_features: int, int8_activations: bool) -> bool:
    """Whether a GGUFLinear of this type and row length can run on the chosen kernel."""
    return (supports if int8_activations else gguf_float.supports)(qtype, in_features)


def matmul(
    x: torch.Tensor, blocks: torch.Tensor, qtype: str, out_features: int, lib=None
) -> torch.Tensor:
    """x [rows, K] float32 @ W^T -> [rows, out_features], W as GGUF blocks [out_features, bytes]."""
    lib = lib or library()
    rows, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    xq = torch.empty(rows * (k // BLOCK) * _Q8_BLOCK_BYTES, dtype=torch.uint8)
    threads = torch.get_num_threads()
    lib.gguf_quantize_rows_q8(x.data_ptr(), x.stride(0), rows, k, xq.data_ptr(), threads)
    y = torch.empty(rows, out_features)
    lib.gguf_matmul(
        TYPE_IDS[qtype],
        blocks.data_ptr(),
        out_features,
        k,
        xq.data_ptr(),
        rows,
        y.data_ptr(),
        out_features,
        threads,
    )
    return y


def dequantize_rows(
    blocks: torch.Tensor, qtype: str, in_features: int, index: torch.Tensor, lib=None
) -> torch.Tensor:
    """Rows `index` of W (GGUF blocks [rows, bytes]) as float32 [len(index), in_features]."""
    lib = lib or library()
    index = index.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(index.numel(), in_features)
    lib.gguf_dequantize_rows(
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
        self.in_features = blocks.shape[1] // _block_bytes(qtype) * BLOCK
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


def _block_bytes(qtype: str) -> int:
    return {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[qtype]
