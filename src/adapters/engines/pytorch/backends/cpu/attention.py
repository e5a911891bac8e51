"""Decode attention on the CPU through the C kernel `csrc/paged_decode_attention.c`.

`paged_decode_attention_cpu` returns None when the kernel does not apply (no compiler, not
float32, layouts it does not take); the caller then runs the torch path, which is also this
kernel's reference in the tests.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import build

# Pointers go in as plain addresses (`data_ptr()`): a typed `ctypes.cast` per pointer was five
# Python calls a layer of a decode step.
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def _kernel():
    lib = build.load("paged_decode_attention")
    if lib is None:
        return None
    fn = lib.paged_decode_attention_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr]
    fn.argtypes += [_i64] * 6 + [ctypes.c_float, _i64, ctypes.c_float, ctypes.c_int]
    return fn


def paged_decode_attention_cpu(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor | None:
    """q: [seqs, heads, dim] (tokens may be strided, heads and dims contiguous); caches
    `[num_blocks, block_size, kv_heads, dim]`; block_tables [seqs, max_blocks] and
    context_lens [seqs] int64. sliding_window: attend to the last this-many positions only;
    logit_softcap: scores = softcap * tanh(scores / softcap) after the scale.
    Returns [seqs, heads, dim], or None if the kernel can't run."""
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(
            f"sliding_window must be a positive number of tokens or None, got {sliding_window}"
        )
    if logit_softcap is not None and not logit_softcap > 0:
        raise ValueError(f"logit_softcap must be positive or None, got {logit_softcap}")
    if q.device.type != "cpu":  # before `_kernel()`, which compiles the library
        return None
    fn = _kernel()
    if (
        fn is None
        or q.dtype != torch.float32
        or k_cache.dtype != torch.float32
        or q.stride(2) != 1
        or q.stride(1) != q.shape[2]
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
    ):
        return None
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    block_tables = block_tables.contiguous()
    context_lens = context_lens.contiguous()
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=q.dtype)
    status = fn(
        q.data_ptr(),
        q.stride(0),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        block_tables.data_ptr(),
        context_lens.data_ptr(),
        out.data_ptr(),
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        block_tables.shape[1],
        scale,
        sliding_window or 0,  # the kernel's "off" values
        logit_softcap or 0.0,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("paged_decode_attention_f32: out of memory for its score buffers")
    return out


def cpu_decode_kernel_available() -> bool:
    return _kernel() is not None
