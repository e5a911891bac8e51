"""The mma-layout W4A16 GEMM (`kernels/w4a16_mma.py`) against the current one and bf16 on a GPU
(issue 16): Llama-3-8B's four linears at M = 1, 16 and 64, group size 128, bf16.

    python3 benchmark/gpu_w4a16_mma.py --output FILE [--sweep]

Per linear and M, microseconds a GEMM replayed in a CUDA graph, every weight read from HBM
(each replay cycles through copies spanning 4x the L2, as a model's 32 layers do): `cur` is
`kernels/w4a16_gemm.py` (the one-row GEMV at M = 1, its tensor-core kernel at 16 and 64),
`mma` the new kernel at its default tiles, `bf16` `x @ W`. `%floor` = the byte floor (half a
byte a weight, the scales and zeros, x and y at `HBM_BYTES_PER_S`) over the time. Each kernel's
output is checked against the fp32 product of the dequantised weight first. `--sweep` also
times the mma kernel over tiles, pipeline stages and splits (`SWEEP`) to set `_config` from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import triton
from triton.testing import do_bench_cudagraph

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from kernels.w4a16_gemm import pack_int4_rows, w4a16_gemm  # noqa: E402
from kernels.w4a16_mma import (  # noqa: E402
    PLANES,
    _config,
    mma_zeros,
    pack_int4_mma,
    w4a16_mma_gemm,
)

LINEARS = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
GROUP = 128
HBM_BYTES_PER_S = 4.25e12  # what an H200's HBM3e sustains (the other GPU benchmarks' figure)
L2_BYTES = 50 << 20
NUM_SMS = 132
# (BLOCK_N, num_warps, num_stages, programs a SM the split aims at, scale folded into the
# dot's operand or applied to each group's fresh product)
SWEEP = list(itertools.product((64, 128), (4,), (2, 3), (1, 2, 4), (0, 1)))


def weights(k: int, n: int) -> dict[str, torch.Tensor]:
    codes = torch.randint(0, 16, (k, n), device="cuda")
    scales = (torch.rand(k // GROUP, n, device="cuda") * 0.01 + 1e-3).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (k // GROUP, n), device="cuda")
    return {
        "rows": pack_int4_rows(codes), "mma": pack_int4_mma(codes, GROUP), "scales": scales,
        "zeros": zeros.to(torch.bfloat16), "mma_zeros": mma_zeros(zeros, torch.bfloat16),
        "dense": (codes.float() - zeros.float().repeat_interleave(GROUP, 0))
        * scales.float().repeat_interleave(GROUP, 0),
    }  # fmt: skip


def floor_bytes(m: int, k: int, n: int) -> int:
    return k * n // 2 + 2 * 2 * (k // GROUP) * n + 2 * m * (k + n)


def graph_us(fn: Callable[[Any], Any], ws: list) -> float:
    return do_bench_cudagraph(lambda: [fn(w) for w in ws]) * 1e3 / len(ws)


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


def split_for(m: int, n: int, k: int, block_m: int, block_n: int, per_sm: int) -> int:
    tiles = math.ceil(m / block_m) * math.ceil(n / block_n)
    return max(1, min(math.ceil(per_sm * NUM_SMS / tiles), math.ceil(k / (PLANES * GROUP))))


def row_for(name: str, k: int, n: int, m: int, cold: list, sweep: bool) -> dict[str, Any]:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w0 = cold[0]
    expected = x.float() @ w0["dense"]
    kernels = {
        "cur": lambda w: w4a16_gemm(x, w["rows"], w["scales"], w["zeros"], GROUP),
        "mma": lambda w: w4a16_mma_gemm(x, w["mma"], w["scales"], w["mma_zeros"], GROUP),
    }
    floor_us = floor_bytes(m, k, n) / HBM_BYTES_PER_S * 1e6
    row: dict[str, Any] = {"linear": name, "M": m, "K": k, "N": n, "floor_us": floor_us}
    row["mma_config"] = _config(m, n, k, GROUP)
    for kind, fn in kernels.items():
        row[f"{kind}_error"] = rel_error(fn(w0), expected)
        row[f"{kind}_us"] = graph_us(fn, cold)
    dense = [w["dense"].to(torch.bfloat16) for w in cold[: max(2, len(cold) // 4)]]
    row["bf16_us"] = graph_us(lambda w: x @ w, dense)
    if sweep:
        row["sweep"] = []
        block_m = row["mma_config"]["BLOCK_M"]
        for block_n, warps, stages, per_sm, fold in SWEEP:
            cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            cfg["FOLD_SCALE"] = fold
            cfg["SPLIT_K"] = split_for(m, n, k, block_m, block_n, per_sm)

            def fn(w, cfg=cfg):
                return w4a16_mma_gemm(x, w["mma"], w["scales"], w["mma_zeros"], GROUP, config=cfg)

            try:
                point = cfg | {"per_sm": per_sm, "error": rel_error(fn(w0), expected)}
                point["us"] = graph_us(fn, cold)
            except (triton.runtime.errors.OutOfResources, RuntimeError) as e:
                point = cfg | {"per_sm": per_sm, "failed": type(e).__name__}
            row["sweep"].append(point)
    print(json.dumps(row), flush=True)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'linear':<8} {'M':>3} {'floor':>6} {'cur':>7} {'mma':>7} {'bf16':>7} {'cur%fl':>7} "
          f"{'mma%fl':>7} {'mma/cur':>8} {'bf16/mma':>8} {'mma err':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['linear']:<8} {r['M']:>3} {r['floor_us']:>6.1f} {r['cur_us']:>7.1f} "
            f"{r['mma_us']:>7.1f} {r['bf16_us']:>7.1f} {100 * r['floor_us'] / r['cur_us']:>6.0f}% "
            f"{100 * r['floor_us'] / r['mma_us']:>6.0f}% {r['cur_us'] / r['mma_us']:>8.2f} "
            f"{r['bf16_us'] / r['mma_us']:>8.2f} {r['mma_error']:>8.1e}"
        )
    print("(us a GEMM, weights from HBM; mma/cur > 1: the new kernel is faster)")
    for r in rows:
        points = [p for p in r.get("sweep", []) if "us" in p]
        for p in sorted(points, key=lambda p: p["us"])[:4]:
            print(
                f"  best {r['linear']:<8} M{r['M']:<3} N{p['BLOCK_N']:>4} w{p['num_warps']} "
                f"s{p['num_stages']} fold{p['FOLD_SCALE']} split {p['SPLIT_K']:>3} ({p['per_sm']}/SM): {p['us']:7.1f} us "
                f"({100 * r['floor_us'] / p['us']:.0f}%), error {p['error']:.1e}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_w4a16_mma.json")
    ap.add_argument("--sweep", action="store_true", help="other tiles, stages and splits too")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, k, n in LINEARS:
        copies = max(2, math.ceil(4 * L2_BYTES / floor_bytes(1, k, n)))
        cold = [weights(k, n) for _ in range(copies)]
        rows += [row_for(name, k, n, m, cold, args.sweep) for m in args.rows]
        del cold
        torch.cuda.empty_cache()
    print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    args.output.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
