"""GGUF Q4_0 / Q4_1 / Q8_0 blocks times float32 activations, through `csrc/gguf_float.c`.

The default kernel for a GGUF file on the CPU: the weights stay in the file's blocks (4.5 to
8.5 bits a weight) and each block is dequantized in registers, so the result is the float32
path's (dequantize, then matmul) up to the order of the float32 sums, unlike the int8 kernels
of `gguf_linear.matmul`, which round the activations. AVX-512 or AVX2 where the CPU has them,
plain C elsewhere; `available()` is False only without a compiler or with
`LMDEPLOY_CPU_KERNELS=0` (the loader then dequantizes to float32).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import build

TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}
BLOCK = 32
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


@functools.cache
def library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The built kernel; `extra_flags` build a variant (tests: the AVX2 and plain C paths)."""
    lib = build.load("gguf_float", extra_flags)
    if lib is None:
        return None
    lib.gguf_float_matmul.restype = _int
    lib.gguf_float_matmul.argtypes = [_int, _ptr, _i64, _i64, _ptr, _i64, _i64, _ptr, _ptr, _i64, _int]  # fmt: skip
    lib.gguf_float_lanes.restype = _int
    return lib


def available() -> bool:
    return library() is not None


def supports(qtype: str, in_features: int) -> bool:
    """Whether a weight of this type and row length can stay quantized on this kernel."""
    return qtype in TYPE_IDS and in_features % BLOCK == 0 and available()


def matmul(
    x: torch.Tensor,
    blocks: torch.Tensor,
    qtype: str,
    out_features: int,
    bias: torch.Tensor | None = None,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """x [rows, K] float32 @ W^T (+ bias) -> [rows, out_features], W as GGUF blocks
    [out_features, bytes]."""
    lib = lib or library()
    rows, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty(rows, out_features)
    status = lib.gguf_float_matmul(
        TYPE_IDS[qtype], blocks.data_ptr(), out_features, k, x.data_ptr(), x.stride(0), rows,
        None if bias is None else bias.data_ptr(), y.data_ptr(), out_features,
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"gguf_float_matmul failed ({status}): out of memory for a row buffer")
    return y
