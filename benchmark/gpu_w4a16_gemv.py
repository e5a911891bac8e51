"""The W4A16 one-row GEMV against its byte floor on a GPU (issue 16): Llama-3-8B's four linears
at M = 1, group size 128, bf16 activations.

    python3 benchmark/gpu_w4a16_gemv.py --output FILE [--sweep]

Per linear, microseconds per GEMM replayed in a CUDA graph (`triton.testing.do_bench_cudagraph`)
for the old kernel (`w4a16_gemv_old.py`), the current one (`lmdeploy_kernels/w4a16_gemm.py`) and bf16
`x @ W`. `cold`: each replay cycles through copies of the weights spanning 4x the L2, as a
model's 32 layers do (every weight read from HBM); `hot`: one copy, as `gpu_quant.py`'s table
timed it (q/k/v and o then fit in the H200's 50 MiB L2). The byte floor is the bytes the GEMV
must read (half a byte a weight, the bf16 scales and zeros, x and y) at `HBM_BYTES_PER_S`;
`%floor` = floor / cold time. Before timing, each kernel's output is checked against the fp32
reference (a flush-to-zero of the denormals the new kernel reads would show here as a large
error). `--sweep` also times the current kernel at other tiles and splits (`SWEEP`), to set the
defaults in `_config` from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from triton.testing import do_bench_cudagraph

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the benchmark-local old kernel; lmdeploy_kernels/

from w4a16_gemv_old import w4a16_gemv_old  # noqa: E402

from lmdeploy_kernels.w4a16_gemm import (  # noqa: E402
    _config,
    _split_k,
    pack_int4_rows,
    w4a16_gemm,
    w4a16_gemm_ref,
)

# (name, K, N) of Llama-3-8B's linears, q/k/v and gate/up packed as the engine runs them.
LINEARS = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
GROUP = 128
HBM_BYTES_PER_S = 4.25e12  # the issue's figure for what an H200's HBM3e sustains
L2_BYTES = 50 << 20  # the H200's
# (BLOCK_N, BLOCK_K, num_warps, programs a SM the split aims at) tried by --sweep.
SWEEP = [
    (256, 64, 1, 6),
    (256, 64, 1, 12),
    (256, 64, 1, 24),
    (256, 32, 1, 12),
    (256, 32, 1, 24),
    (512, 64, 2, 6),
    (512, 32, 2, 8),
    (1024, 32, 2, 6),
    (1024, 32, 4, 4),
]


def int4_weights(k: int, n: int) -> dict[str, torch.Tensor]:
    codes = torch.randint(0, 16, (k, n), device="cuda")
    return {
        "qweight": pack_int4_rows(codes),
        "scales": (torch.rand(k // GROUP, n, device="cuda") * 0.01 + 1e-3).to(torch.bfloat16),
        "zeros": torch.randint(0, 16, (k // GROUP, n), device="cuda").to(torch.bfloat16),
    }


def floor_bytes(k: int, n: int) -> int:
    return k * n // 2 + 2 * 2 * (k // GROUP) * n + 2 * (k + n)


def copies_for(bytes_each: int) -> int:
    return max(2, math.ceil(4 * L2_BYTES / bytes_each))


def graph_us(fn: Callable[[Any], Any], weights: list) -> float:
    """Microseconds a call, the calls over `weights` in turn replayed from one CUDA graph."""
    return do_bench_cudagraph(lambda: [fn(w) for w in weights]) * 1e3 / len(weights)


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference over the largest reference value."""
    expected = expected.float()
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


def linear_row(name: str, k: int, n: int, sweep: bool) -> dict[str, Any]:
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    cold = [int4_weights(k, n) for _ in range(copies_for(floor_bytes(k, n)))]
    dense = [
        torch.randn(k, n, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * k * n))
    ]
    w0 = cold[0]
    ref = w4a16_gemm_ref(x, w0["qweight"], w0["scales"], w0["zeros"], GROUP)
    kernels = {
        "old": lambda w: w4a16_gemv_old(x, w["qweight"], w["scales"], w["zeros"], GROUP),
        "new": lambda w: w4a16_gemm(x, w["qweight"], w["scales"], w["zeros"], GROUP),
    }
    floor_us = floor_bytes(k, n) / HBM_BYTES_PER_S * 1e6
    row: dict[str, Any] = {"linear": name, "M": 1, "K": k, "N": n, "floor_us": floor_us}
    row["config"] = _config(1, n, k, GROUP)
    for kind, fn in kernels.items():
        row[f"{kind}_error"] = max_error(fn(w0), ref)
        row[f"{kind}_us"] = graph_us(fn, cold)
        row[f"{kind}_hot_us"] = graph_us(fn, cold[:1])
        row[f"{kind}_floor_pct"] = 100 * floor_us / row[f"{kind}_us"]
    row["bf16_us"] = graph_us(lambda w: x @ w, dense)
    row["bf16_hot_us"] = graph_us(lambda w: x @ w, dense[:1])
    row["new_vs_bf16"] = row["bf16_us"] / row["new_us"]
    if sweep:
        row["sweep"] = [sweep_point(x, cold, k, n, *point) for point in SWEEP]
    print(json.dumps(row), flush=True)
    return row


def sweep_point(x, weights, k: int, n: int, block_n: int, block_k: int, warps: int, per_sm: int):
    tiles = math.ceil(n / block_n)
    cfg = dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    cfg["SPLIT_K"] = _split_k(tiles, k // block_k, programs_per_sm=per_sm)

    def fn(w):
        return w4a16_gemm(x, w["qweight"], w["scales"], w["zeros"], GROUP, config=cfg)

    w0 = weights[0]
    error = max_error(fn(w0), w4a16_gemm_ref(x, w0["qweight"], w0["scales"], w0["zeros"], GROUP))
    return cfg | {"programs_per_sm": per_sm, "us": graph_us(fn, weights), "error": error}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'linear':<8} {'floor':>6} {'old':>7} {'new':>7} {'bf16':>7} {'old%fl':>7} "
        f"{'new%fl':>7} {'new/bf16':>8} {'old hot':>8} {'new hot':>8} {'new err':>8}"
    )
    for r in rows:
        print(
            f"{r['linear']:<8} {r['floor_us']:>6.1f} {r['old_us']:>7.1f} {r['new_us']:>7.1f} "
            f"{r['bf16_us']:>7.1f} {r['old_floor_pct']:>6.0f}% {r['new_floor_pct']:>6.0f}% "
            f"{r['new_vs_bf16']:>8.2f} {r['old_hot_us']:>8.1f} {r['new_hot_us']:>8.1f} "
            f"{r['new_error']:>8.1e}"
        )
    print("(us a GEMM; cold: weights from HBM, hot: one copy, in L2 where it fits)")
    for r in rows:
        for p in r.get("sweep", []):
            print(
                f"  sweep {r['linear']:<8} N{p['BLOCK_N']:>5} K{p['BLOCK_K']:>4} w{p['num_warps']} "
                f"split {p['SPLIT_K']:>3}: {p['us']:7.1f} us ({100 * r['floor_us'] / p['us']:.0f}%), "
                f"error {p['error']:.1e}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_w4a16_gemv.json")
    ap.add_argument("--sweep", action="store_true", help="other tiles and splits too")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [linear_row(name, k, n, args.sweep) for name, k, n in LINEARS]
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    args.output.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
