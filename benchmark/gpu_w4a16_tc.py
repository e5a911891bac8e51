"""The W4A16 tensor-core GEMM at decode batches on a GPU (issue 16): Llama-3-8B's four linears
at M = 2 .. 64, group size 128, bf16 activations, the old kernel (`w4a16_tc_old.py`) against
the current one (`lmdeploy_kernels/w4a16_gemm.py`) and bf16 `x @ W`.

    python3 benchmark/gpu_w4a16_tc.py --output FILE [--sweep] [--sweep-rows 16 64]

Microseconds per GEMM replayed in a CUDA graph (`do_bench_cudagraph`), each replay cycling
through copies of the weights spanning 4x the L2 (every weight read from HBM, as a model's 32
layers do). Before timing, each kernel's output is checked against the fp32 reference.
`--sweep` times the current kernel over tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps,
num_stages, split-K programs a SM) at the rows `--sweep-rows` on the linears `--sweep-linears`,
each point checked too; a tile that fails to compile (shared memory) is recorded as such.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import triton

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the benchmark-local old kernel; lmdeploy_kernels/

from gpu_w4a16_gemv import (  # noqa: E402
    GROUP,
    HBM_BYTES_PER_S,
    LINEARS,
    copies_for,
    floor_bytes,
    graph_us,
    int4_weights,
    max_error,
)
from w4a16_tc_old import w4a16_tc_old  # noqa: E402

from lmdeploy_kernels.w4a16_gemm import _config, _split_k, w4a16_gemm, w4a16_gemm_ref  # noqa: E402

ROWS = [2, 4, 8, 16, 32, 64]
SWEEP_BLOCK_M = [16, 32, 64]
SWEEP_BLOCK_N = [64, 128, 256]
SWEEP_BLOCK_K = [128, 256]  # a nibble plane must be >= 16 rows deep: BLOCK_K >= 128
SWEEP_WARPS = [4, 8]
SWEEP_STAGES = [2, 3, 4]
SWEEP_PER_SM = [2, 4, 8]  # split-K programs a SM the split aims at; 0: no split
MAX_ERROR = 2e-2  # of the largest output: bf16 rounding of W and y


def call(fn, x, w):
    return fn(x, w["qweight"], w["scales"], w["zeros"], GROUP)


def rows_of(name: str, k: int, n: int, sweep_rows: list[int], sweep: bool) -> list[dict]:
    cold = [int4_weights(k, n) for _ in range(copies_for(floor_bytes(k, n)))]
    dense = [torch.randn(k, n, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * k * n))]  # fmt: skip
    out = []
    for m in ROWS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = call(w4a16_gemm_ref, x, cold[0])
        row: dict[str, Any] = {"linear": name, "M": m, "K": k, "N": n}
        row["floor_us"] = (floor_bytes(k, n) + 2 * (m - 1) * (k + n)) / HBM_BYTES_PER_S * 1e6
        row["config"] = _config(m, n, k, GROUP)
        for kind, fn in (("old", w4a16_tc_old), ("new", w4a16_gemm)):
            row[f"{kind}_error"] = max_error(call(fn, x, cold[0]), ref)
            assert row[f"{kind}_error"] < MAX_ERROR, f"{kind} kernel wrong: {row}"
            row[f"{kind}_us"] = graph_us(lambda w, fn=fn, x=x: call(fn, x, w), cold)
        row["bf16_us"] = graph_us(lambda w, x=x: x @ w, dense)
        row["new_vs_old"] = row["old_us"] / row["new_us"]
        row["new_vs_bf16"] = row["bf16_us"] / row["new_us"]
        if sweep and m in sweep_rows:
            row["sweep"] = sweep_points(x, cold, ref, k, n)
        print(json.dumps({key: v for key, v in row.items() if key != "sweep"}), flush=True)
        out.append(row)
    return out


def sweep_points(x, weights, ref, k: int, n: int) -> list[dict]:
    m = x.shape[0]
    points = []
    grid = itertools.product(
        SWEEP_BLOCK_M, SWEEP_BLOCK_N, SWEEP_BLOCK_K, SWEEP_WARPS, SWEEP_STAGES, SWEEP_PER_SM
    )
    for block_m, block_n, block_k, warps, stages, per_sm in grid:
        if block_m > max(16, triton.next_power_of_2(m)):
            continue  # all-padding rows
        tiles = math.ceil(m / block_m) * math.ceil(n / block_n)
        split = _split_k(tiles, math.ceil(k / block_k), per_sm) if per_sm else 1
        cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split,
                   num_warps=warps, num_stages=stages)  # fmt: skip
        point: dict[str, Any] = cfg | {"programs_per_sm": per_sm}
        try:
            fn = lambda w, cfg=cfg: w4a16_gemm(  # noqa: E731
                x, w["qweight"], w["scales"], w["zeros"], GROUP, config=cfg
            )
            point["error"] = max_error(fn(weights[0]), ref)
            point["us"] = graph_us(fn, weights)
        except Exception as e:  # noqa: BLE001 - a tile out of shared memory or registers
            point["failed"] = f"{type(e).__name__}: {str(e)[:120]}"
        points.append(point)
    return points


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'linear':<8} {'M':>3} {'floor':>6} {'old':>7} {'new':>7} {'bf16':>7} {'new/old':>8} {'new/bf16':>8} {'err':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['linear']:<8} {r['M']:>3} {r['floor_us']:>6.1f} {r['old_us']:>7.1f} "
            f"{r['new_us']:>7.1f} {r['bf16_us']:>7.1f} {r['new_vs_old']:>8.2f} "
            f"{r['new_vs_bf16']:>8.2f} {r['new_error']:>8.1e}"
        )
    print("(us a GEMM in a CUDA graph, weights from HBM; new/x: speed-up of the new kernel)")
    for r in rows:
        ok = [p for p in r.get("sweep", []) if "us" in p and p["error"] < MAX_ERROR]
        for p in sorted(ok, key=lambda p: p["us"])[:8]:
            print(
                f"  sweep {r['linear']:<8} M{r['M']:>3} BM{p['BLOCK_M']:>3} BN{p['BLOCK_N']:>4} "
                f"BK{p['BLOCK_K']:>4} w{p['num_warps']} s{p['num_stages']} "
                f"split {p['SPLIT_K']:>3}: {p['us']:7.1f} us (bf16 {r['bf16_us']:.1f})"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_w4a16_tc.json")
    ap.add_argument("--sweep", action="store_true", help="the current kernel over tiles too")
    ap.add_argument("--sweep-rows", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--sweep-linears", nargs="+", default=["qkv", "gate_up"])
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, k, n in LINEARS:
        sweep = args.sweep and name in args.sweep_linears
        rows += rows_of(name, k, n, args.sweep_rows, sweep)
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    args.output.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
