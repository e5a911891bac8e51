"""W8A8 GEMM: `out = (a_q @ b_q^T) * a_scale * b_scale^T (+ bias)` with 8-bit operands.

`a_q [M, K]` holds activations quantised per token (`per_token_quant.py`, scales `[M, 1]`),
`b_q [N, K]` the weight quantised per output channel (scales `[N, 1]`, SmoothQuant's layout on
disk). int8 operands accumulate exactly in int32 (tensor cores: 2x bf16's rate); float8 e4m3
operands in fp32. The scales are applied once, to the accumulator, in the epilogue.

Grid `(cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),)` grouped along M so that neighbouring programs
share tiles of `b` in L2. FLOPs = 2 M N K; bytes = (M K + N K) + M N * e_out. Prefill-sized
M is compute-bound (target ~2x the bf16 GEMM); decode-sized M is bound by reading `b` once
(half the bytes of bf16). Decode rows fill the SMs with narrow N tiles rather than split-K,
whose partial sums need float atomics (an order, so a result, that changes from run to run) or
a second reduction launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=w)
        for bm, bn, bk, s, w in [
            # decode-sized rows: bound by reading the weight once. Narrow N tiles so that even
            # N = 4096 makes 128 programs (the H200 has 132 SMs: 64-wide tiles left half idle),
            # deep K and many stages to keep enough of the weight in flight per SM.
            (16, 32, 256, 4, 4),
            (16, 64, 128, 4, 4),
            (16, 64, 256, 4, 4),
            (16, 128, 256, 3, 4),
            (32, 32, 256, 4, 4),
            (32, 64, 128, 4, 4),
            (64, 32, 256, 4, 4),
            (64, 64, 128, 4, 4),
            (64, 128, 128, 3, 4),
            (64, 256, 128, 3, 8),
            # batch-256 decode: one or two M tiles, still narrow enough in N to fill the SMs
            (128, 64, 128, 4, 4),
            (128, 128, 128, 3, 8),
            # prefill-sized rows: large tiles to feed the int8 tensor cores
            (128, 256, 64, 3, 8),
            (128, 256, 128, 3, 8),
            (256, 128, 128, 3, 8),
        ]
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Tune each size class of M only over tiles that fit it: an M tile far taller than the
    rows wastes the tensor cores, and each config tried costs start-up time."""
    bucket = named_args["m_bucket"]
    lo, hi = (64, 256) if bucket > 256 else (16, max(16, bucket))
    return [c for c in configs if lo <= c.kwargs["BLOCK_M"] <= hi]


def size_class(m: int) -> int:
    """The size class of M that the tuning is keyed on: decode rows (<= 16, <= 64), a large
    decode batch (<= 256), prefill chunks (<= 1024, more). Batch-256 decode and an 8k-token
    prefill chunk want different tiles, so they are tuned apart."""
    for bucket in (16, 64, 256, 1024):
        if m <= bucket:
            return bucket
    return 4096


@triton.jit
def _w8a8_gemm_kernel(
    a_ptr,
    b_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    stride_om,
    stride_on,
    m_bucket,
    HAS_BIAS: tl.constexpr,
    IS_INT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size)
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask, n_mask = offs_m < M, offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT else tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32 if IS_INT else tl.float32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    a_scale = tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_w8a8_gemm_autotuned = triton.autotune(
    configs=_configs(),
    key=["m_bucket", "N", "K", "IS_INT"],
    prune_configs_by={"early_config_prune": _prune},
)(_w8a8_gemm_kernel)


def w8a8_gemm(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_q [M, K] and b_q [N, K], both int8 or both float8_e4m3fn; a_scale [M, 1] and
    b_scale [N, 1] fp32; bias [N] or None -> [M, N] of `out_dtype`."""
    assert a_q.dtype == b_q.dtype, f"operands differ: {a_q.dtype} and {b_q.dtype}"
    assert a_q.dtype in (torch.int8, torch.float8_e4m3fn), f"8-bit operands only, not {a_q.dtype}"
    (m, k), (n, k_b) = a_q.shape, b_q.shape
    assert k == k_b, f"inner dimensions differ: a has {k}, b has {k_b}"
    assert a_scale.numel() == m and b_scale.numel() == n, "one scale per row of a and of b"
    out = torch.empty(m, n, dtype=out_dtype, device=a_q.device)
    if m == 0 or n == 0:
        return out
    args = (
        a_q,
        b_q,
        a_scale.reshape(m).float().contiguous(),
        b_scale.reshape(n).float().contiguous(),
        bias if bias is not None else out,  # unread without HAS_BIAS
        out,
        m,
        n,
        k,
        *a_q.stride(),
        *b_q.stride(),
        *out.stride(),
        # Tuned once per size class of M, not per M: a few classes keep start-up short.
        size_class(m),
    )
    flags = dict(HAS_BIAS=bias is not None, IS_INT=a_q.dtype == torch.int8, GROUP_M=8)
    if a_q.is_cuda:
        grid = lambda meta: (  # noqa: E731
            triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),
        )
        _w8a8_gemm_autotuned[grid](*args, **flags)
    else:  # the interpreter: one small tile shape, no tuning runs
        block_m, block_n, block_k = 16, 32, 32
        grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
        _w8a8_gemm_kernel[grid](*args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def w8a8_gemm_ref(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    b_q: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    # int8 products summed in float64 are exact for any K a model has (|sum| < 2^53).
    acc = a_q.double() @ b_q.double().t()
    out = acc * a_scale.reshape(-1, 1).double() * b_scale.reshape(1, -1).double()
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)
