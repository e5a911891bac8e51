"""The model's elementwise work on the CPU through the C kernels of `csrc/cpu_ops.c`.

The same functions as `backends/cuda/ops.py` (residual add + RMSNorm, SiLU-and-mul), so that
the layers run the same fused layer loop on both; plus rotary fused with the K/V cache write,
which the CPU attention path takes instead of rotating and then indexing into the cache.
`available()` says whether the kernels can run (a C compiler, `LMDEPLOY_CPU_KERNELS` not 0);
without them the layers take the torch ops of `backends/torch_native`.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import build

# Pointers go in as plain addresses (c_void_p from `data_ptr()`): a call is a few
# microseconds of Python, and casting each pointer to a typed one was half of that.
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


@functools.cache
def _lib():
    lib = build.load("cpu_ops")
    if lib is None:
        return None
    lib.add_rms_norm_f32.restype = None
    lib.add_rms_norm_f32.argtypes = [_ptr] * 4 + [_i64, _i64, ctypes.c_float, ctypes.c_int]
    lib.silu_and_mul_f32.restype = None
    lib.silu_and_mul_f32.argtypes = [_ptr, _ptr, _i64, _i64, ctypes.c_int]
    lib.rotary_write_kv_f32.restype = None
    lib.rotary_write_kv_f32.argtypes = [_ptr, _i64, _ptr, _ptr, _i64, _ptr, _ptr, _ptr]
    lib.rotary_write_kv_f32.argtypes += [_i64] * 4 + [ctypes.c_int]
    return lib


def available(x: torch.Tensor) -> bool:
    """Whether the fused layer loop can run on x's device and dtype through these kernels."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and _lib() is not None


def _add_rms_norm(
    h: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    assert h.is_contiguous() and weight.is_contiguous(), "rows must be contiguous"
    assert residual is None or residual.is_contiguous()
    out = torch.empty(h.shape)  # float32 (`available`); empty_like is two aten ops a call
    dim = h.shape[-1]
    _lib().add_rms_norm_f32(
        h.data_ptr(),
        None if residual is None else residual.data_ptr(),
        weight.data_ptr(),
        out.data_ptr(),
        h.numel() // dim,
        dim,
        eps,
        torch.get_num_threads(),
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _add_rms_norm(x.contiguous(), None, weight, eps)


def fused_add_rms_norm(
    h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(residual + h), residual + h); the sum is written into `residual` in place."""
    h = h.contiguous()
    return _add_rms_norm(h, residual, weight, eps), residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of contiguous float32 rows [tokens, 2 x inter] (`available` true)."""
    assert gate_up.is_contiguous(), "rows must be contiguous"
    rows, width = gate_up.shape
    out = torch.empty(rows, width // 2)
    _lib().silu_and_mul_f32(
        gate_up.data_ptr(), out.data_ptr(), rows, width // 2, torch.get_num_threads()
    )
    return out


def rotary_write_kv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> bool:
    """Rotate the q and k heads of qkv [tokens, (heads + 2 kv_heads) x dim] in place and copy
    each token's k and v to its cache slot. False (nothing done) for layouts it does not take."""
    if (
        qkv.stride(-1) != 1
        or cos.dtype != torch.float32
        or cos.stride(-1) != 1
        or sin.stride(-1) != 1
        or cos.stride(0) != sin.stride(0)
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
        or not k_cache.dtype == v_cache.dtype == torch.float32  # e.g. a quantized cache
    ):
        return False
    slots = slot_mapping.contiguous()
    _lib().rotary_write_kv_f32(
        qkv.data_ptr(),
        qkv.stride(0),
        cos.data_ptr(),
        sin.data_ptr(),
        cos.stride(0),
        slots.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        qkv.shape[0],
        num_heads,
        num_kv_heads,
        head_dim,
        torch.get_num_threads(),
    )
    return True
