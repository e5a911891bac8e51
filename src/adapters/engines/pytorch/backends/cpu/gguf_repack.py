"""GGUF Q4_0 / Q4_1 weights repacked 16 output rows at a time, through `csrc/gguf_repack.c`.

A one-row GEMV over `gguf_float`'s layout pays each 32-weight block's fp16 header once per
row; the repacked layout pays it once per 16 rows (see the C file's comment for the layout).
The GEMV needs AVX-512; `gemv_available()` is False elsewhere and callers keep `gguf_float`.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import build

TYPE_IDS = {"Q4_0": 2, "Q4_1": 3}
ROWS = 16
BLOCK = 32
_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


@functools.cache
def library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The built kernel; `extra_flags` build a variant (tests: a build without AVX-512)."""
    lib = build.load("gguf_repack", extra_flags)
    if lib is None:
        return None
    lib.gguf_repack_bytes.restype = _i64
    lib.gguf_repack_bytes.argtypes = [_int, _i64, _i64]
    lib.gguf_repack.restype = _int
    lib.gguf_repack.argtypes = [_int, _ptr, _i64, _i64, _ptr]
    lib.gguf_repack_gemv.restype = _int
    lib.gguf_repack_gemv.argtypes = [_int, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _int]
    lib.gguf_repack_available.restype = _int
    return lib


def gemv_available(lib: ctypes.CDLL | None = None) -> bool:
    """Whether this machine's build has the repacked GEMV (AVX-512F)."""
    lib = lib or library()
    return lib is not None and lib.gguf_repack_available() == 1


def supports(qtype: str, out_features: int, in_features: int) -> bool:
    """Whether a weight of this type and shape can be repacked."""
    shape_ok = out_features > 0 and in_features > 0
    return qtype in TYPE_IDS and shape_ok and out_features % ROWS == 0 and in_features % BLOCK == 0


def repack(
    blocks: torch.Tensor, qtype: str, out_features: int, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    """GGUF blocks [out_features, bytes] (uint8) -> the repacked layout (flat uint8)."""
    lib = lib or library()
    blocks = blocks.contiguous()
    in_features = _in_features(blocks, qtype, out_features)
    if not supports(qtype, out_features, in_features):
        raise ValueError(
            f"cannot repack a {qtype} weight of {out_features} x {in_features}: the layout takes "
            f"Q4_0/Q4_1 with out_features a multiple of {ROWS}; keep gguf_float's path for it"
        )
    out = torch.empty(
        lib.gguf_repack_bytes(TYPE_IDS[qtype], out_features, in_features), dtype=torch.uint8
    )
    lib.gguf_repack(TYPE_IDS[qtype], blocks.data_ptr(), out_features, in_features, out.data_ptr())
    return out


def _in_features(blocks: torch.Tensor, qtype: str, out_features: int) -> int:
    block_bytes = {"Q4_0": 18, "Q4_1": 20}.get(qtype, 0)
    if out_features <= 0:
        return 0
    row_bytes = blocks.numel() // out_features
    if block_bytes == 0 or blocks.numel() != row_bytes * out_features or row_bytes % block_bytes:
        return 0
    return row_bytes // block_bytes * BLOCK


def gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    qtype: str,
    out_features: int,
    bias: torch.Tensor | None = None,
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor:
    """x [1, K] float32 @ W^T (+ bias) -> [1, out_features], W as `repack` left it."""
    lib = lib or library()
    if x.shape[0] != 1:
        raise ValueError(f"the repacked GEMV takes one row, got {x.shape[0]}: use gguf_float")
    x = x.contiguous()
    y = torch.empty(1, out_features)
    status = lib.gguf_repack_gemv(
        TYPE_IDS[qtype], packed.data_ptr(), out_features, x.shape[1], x.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(
            f"gguf_repack_gemv failed ({status}): check gemv_available() and supports() first"
        )
    return y
