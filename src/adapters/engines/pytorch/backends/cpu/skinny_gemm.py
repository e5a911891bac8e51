"""Linears over a decode step's few rows (at most 16) through `csrc/skinny_gemm.c` (AVX2 + FMA).

`pack(weight)` lays W [N, K] out in 16-column panels once; `matmul(x, panels, n)` is x @ W^T
for x [rows <= 16, K]. `available()` is False without a compiler, without AVX2/FMA, or with
`LMDEPLOY_CPU_KERNELS=0`; the caller keeps oneDNN then (and for more rows).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import build

MAX_ROWS = 16
_LANES = 16
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def _cpu_has_avx2_fma() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "avx2" in flags and "fma" in flags


@functools.cache
def _lib():
    if not _cpu_has_avx2_fma():
        return None
    lib = build.load("skinny_gemm")
    if lib is None:
        return None
    lib.pack_panels_f32.restype = None
    lib.pack_panels_f32.argtypes = [_ptr, _i64, _i64, _ptr]
    lib.skinny_gemm_f32.restype = None
    lib.skinny_gemm_f32.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _i64, ctypes.c_int]
    return lib


def available() -> bool:
    return _lib() is not None


def pack(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] float32 -> panels [ceil(N / 16), K, 16] (zero columns past N)."""
    n, k = weight.shape
    weight = weight.detach().contiguous().float()
    panels = torch.empty(-(-n // _LANES), k, _LANES)
    _lib().pack_panels_f32(weight.data_ptr(), n, k, panels.data_ptr())
    return panels


def matmul(x: torch.Tensor, panels: torch.Tensor, n: int) -> torch.Tensor:
    """x [rows, K] (rows <= 16, unit stride along K) @ W^T -> [rows, n]."""
    rows, k = x.shape
    assert rows <= MAX_ROWS and x.stride(1) == 1 and x.dtype == torch.float32
    y = torch.empty(rows, n)
    scratch = torch.empty(MAX_ROWS * k)
    _lib().skinny_gemm_f32(
        x.data_ptr(),
        x.stride(0),
        panels.data_ptr(),
        y.data_ptr(),
        scratch.data_ptr(),
        rows,
        n,
        k,
        torch.get_num_threads(),
    )
    return y
