"""The dense decode GEMV (lmdeploy_kernels/dense_gemv.py) against cuBLAS on a GPU (issues 14/15): the
attention and MLP linears of Llama-3-8B, Qwen2.5-7B, Mistral-7B and Qwen3-30B-A3B at M = 1,
2 and 4, bf16.

    python3 benchmark/gpu_dense_gemv.py --output FILE [--sweep] [--rows 1 2 4]

Per linear and M, microseconds a GEMM replayed in a CUDA graph (`do_bench_cudagraph`), each
replay cycling through copies of the weight spanning 4x the L2 (every weight read from HBM,
as a model's layers do): cuBLAS (`F.linear`, the engine's path today), our default tiles, and
the best of what the engine times at load (`gemv_candidates`). The byte floor is the bytes a GEMM
must move (W, x, y) at `HBM_BYTES_PER_S`; `%floor` = floor / time. Each output is checked
against `x.float() @ W.float().T` first. `--sweep` also times `SWEEP`'s tiles, splits and warps.
`--variants` times each unsplit one-row tile also as the norm links run it (`rms_us`: x divided by
its rms in the K loop, as a linked norm's reader; `residual_us`: the residual added in the
epilogue, as a norm's producer), beside the plain GEMV (`us`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # gpu_w4a16_gemv's helpers; lmdeploy_kernels/

from gpu_w4a16_gemv import HBM_BYTES_PER_S, copies_for, graph_us, max_error  # noqa: E402

from lmdeploy_kernels.dense_gemv import (  # noqa: E402
    NUM_SMS,
    dense_gemv,
    dense_gemv_ref,
    gemv_candidates,
    gemv_config,
)

# (model, linear, K, N, bias), q/k/v and gate/up packed as the engine runs them.
LINEARS = [
    ("llama-3-8b", "qkv", 4096, 6144, False),
    ("llama-3-8b", "o", 4096, 4096, False),
    ("llama-3-8b", "gate_up", 4096, 28672, False),
    ("llama-3-8b", "down", 14336, 4096, False),
    ("qwen2.5-7b", "qkv", 3584, 4608, True),
    ("qwen2.5-7b", "o", 3584, 3584, False),
    ("qwen2.5-7b", "gate_up", 3584, 37888, False),
    ("qwen2.5-7b", "down", 18944, 3584, False),
    ("mistral-7b", "qkv", 4096, 6144, False),
    ("mistral-7b", "o", 4096, 4096, False),
    ("mistral-7b", "gate_up", 4096, 28672, False),
    ("mistral-7b", "down", 14336, 4096, False),
    ("qwen3-30b-a3b", "qkv", 2048, 5120, False),
    ("qwen3-30b-a3b", "o", 4096, 2048, False),
    ("qwen3-30b-a3b", "router", 2048, 128, False),
]
# (BLOCK_N, BLOCK_K, num_warps, programs a SM the split aims at) tried by --sweep.
SWEEP = [
    (8, 512, 4, 2),
    (8, 512, 4, 4),
    (8, 512, 4, 8),
    (8, 256, 4, 4),
    (16, 256, 4, 4),
    (4, 512, 2, 8),
    (4, 1024, 4, 4),
    (16, 512, 8, 4),
    (32, 256, 8, 2),
]


def floor_bytes(m: int, k: int, n: int) -> int:
    return 2 * (n * k + m * k + m * n)


def sweep_config(m: int, k: int, n: int, block_n: int, block_k: int, warps: int, per_sm: int):
    split = max(1, min(math.ceil(per_sm * NUM_SMS / math.ceil(n / block_n)), k // block_k // 2))
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=warps)


def timed(x, weights, bias, ref, config, variants: bool = False) -> dict[str, Any]:
    def fn(w):
        return dense_gemv(x, w, bias, config)

    row = dict(config, error=max_error(fn(weights[0]), ref), us=graph_us(fn, weights))
    if variants and config["SPLIT_K"] == 1:
        residual = torch.randn(x.shape[0], weights[0].shape[0], device=x.device, dtype=x.dtype)

        def normed(w):
            return dense_gemv(x, w, bias, config, rms_eps=1e-6)

        def summed(w):
            return dense_gemv(x, w, bias, config, residual=residual)

        w0 = weights[0]
        row["rms_error"] = max_error(normed(w0), dense_gemv_ref(x, w0, bias, rms_eps=1e-6))
        row["rms_us"] = graph_us(normed, weights)
        row["residual_error"] = max_error(summed(w0), ref + residual.float())
        row["residual_us"] = graph_us(summed, weights)
    return row


def linear_rows(model: str, name: str, k: int, n: int, has_bias: bool, args) -> list[dict]:
    copies = copies_for(2 * n * k)
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if has_bias else None
    rows = []
    for m in args.rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ weights[0].float().T + (0 if bias is None else bias.float())
        floor_us = floor_bytes(m, k, n) / HBM_BYTES_PER_S * 1e6
        row: dict[str, Any] = dict(model=model, linear=name, M=m, K=k, N=n, bias=has_bias)
        row["floor_us"] = floor_us
        row["cublas_error"] = max_error(F.linear(x, weights[0], bias), ref)
        row["cublas_us"] = graph_us(lambda w, x=x: F.linear(x, w, bias), weights)
        row["default"] = timed(x, weights, bias, ref, gemv_config(m, n, k))
        if m == 1:  # what the engine times at load, and keeps where it beats cuBLAS
            row["load_candidates"] = [
                timed(x, weights, bias, ref, c, args.variants) for c in gemv_candidates(n, k)
            ]
        if args.sweep:
            configs = [sweep_config(m, k, n, *p) for p in SWEEP]
            row["sweep"] = [timed(x, weights, bias, ref, c) for c in configs]
        tried = [row["default"], *row.get("load_candidates", []), *row.get("sweep", [])]
        row["best"] = min(tried, key=lambda t: t["us"])
        for kind, us in (("cublas", row["cublas_us"]), ("default", row["default"]["us"]),
                         ("best", row["best"]["us"])):  # fmt: skip
            row[f"{kind}_floor_pct"] = 100 * floor_us / us
        row["best_vs_cublas"] = row["cublas_us"] / row["best"]["us"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'model':<14} {'linear':<8} {'M':>2} {'floor':>6} {'cuBLAS':>7} {'ours':>7} "
        f"{'best':>7} {'cuB%fl':>7} {'best%fl':>7} {'best/cuB':>8} {'err':>8}  best tiles"
    )
    for r in rows:
        b = r["best"]
        tiles = f"N{b['BLOCK_N']} K{b['BLOCK_K']} w{b['num_warps']} split {b['SPLIT_K']}"
        print(
            f"{r['model']:<14} {r['linear']:<8} {r['M']:>2} {r['floor_us']:>6.1f} "
            f"{r['cublas_us']:>7.1f} {r['default']['us']:>7.1f} {b['us']:>7.1f} "
            f"{r['cublas_floor_pct']:>6.0f}% {r['best_floor_pct']:>6.0f}% "
            f"{r['best_vs_cublas']:>8.2f} {b['error']:>8.1e}  {tiles}"
        )
    print("(us a GEMM, weights cycled past L2; ours: default tiles; best: of all tried)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_dense_gemv.json")
    ap.add_argument("--sweep", action="store_true", help="other tiles, splits and warps too")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--variants", action="store_true", help="the norm links' GEMVs too")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [r for linear in LINEARS for r in linear_rows(*linear, args)]
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    meta["triton"] = triton.__version__
    args.output.write_text(json.dumps(meta | {"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
