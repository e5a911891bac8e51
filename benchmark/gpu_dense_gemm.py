"""The stream-K dense GEMM (kernels/dense_gemm.py) against cuBLAS on the decode step's linears
at 64-512 rows (issue 15; the shapes and rows of gpu_gemm_rows.py, Llama-3-8B, bf16).

    python3 benchmark/gpu_dense_gemm.py [--rows 64 128 256 512] [--output FILE]

Per linear and row count, microseconds a GEMM replayed in a CUDA graph over enough weight
copies that every call reads its weight from HBM (`graph_us`): cuBLAS (`F.linear`, the engine's
path today), then every Hopper candidate of the new kernel (`gemm_candidates`: 2 at 64 rows, 4
at 128, 6 at 256 and 512) with TMA loads under both schedules (stream-K and the plain tiled
one; timed once where both come out the same) and with pointer loads under the chosen schedule,
each checked against `x.float() @ W.float().T` first. Prints per linear the best point beside
cuBLAS and the floor (the larger of the FLOP floor at the measured bf16 GEMM peak and the byte
floor), and per row count the decode step's GEMM totals (32 layers + the LM head): floor,
cuBLAS, our default (config, schedule and loads `dense_gemm` picks unasked), our best per
linear. A run times 5 linears x 18 (config, rows) pairs x up to 3 points = ~250 points plus 20
cuBLAS ones (~0.3 s each: a 20 ms graph replayed 10 times, plus its capture) after 12 compiles
(~1 s each): about 2-3 minutes on an H200.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # gpu_gemm_rows' helpers; kernels/

from gpu_gemm_rows import (  # noqa: E402
    LINEARS,
    cold_weights,
    floors_us,
    gemm_peak_tflops,
    input_and_reference,
    write_report,
)
from gpu_w4a16_gemv import graph_us, max_error  # noqa: E402

from kernels.dense_gemm import (  # noqa: E402
    dense_gemm,
    device_sms,
    gemm_candidates,
    gemm_config,
    launch_plan,
)

MAX_ERROR = 2e-2  # bf16 output against fp32: a larger error means a wrong sum, not rounding


def time_point(
    x: torch.Tensor,
    weights: list,
    ref: torch.Tensor,
    cfg: dict[str, int],
    stream_k: bool | None,
    tma: bool,
) -> dict[str, Any]:
    m, n, k = x.shape[0], weights[0].shape[0], x.shape[1]
    programs, sk_tiles = launch_plan(m, n, k, cfg, device_sms(x.device), stream_k)
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    point: dict[str, Any] = {"config": cfg, "tma": tma, "tiles": tiles, "sk_tiles": sk_tiles}
    point.update(waves=tiles / device_sms(x.device), programs=programs)

    def run(w: torch.Tensor) -> torch.Tensor:
        return dense_gemm(x, w, None, cfg, stream_k, tma=tma)

    try:
        point["error"] = max_error(run(weights[0]), ref)
    except Exception as e:  # a config past the shared memory fails to compile: note, go on
        point.update(error=float("inf"), us=float("inf"), failed=repr(e)[:300])
        return point
    point["us"] = graph_us(run, weights)
    return point


def candidate_points(m: int, n: int, k: int) -> list[tuple[dict[str, int], bool | None, bool]]:
    """(config, stream_k, tma) to time: TMA under each distinct schedule, pointers under the
    chosen one (stream-K of whole waves is the tiled schedule: timed once)."""
    sms = device_sms(torch.device("cuda"))
    points = []
    for cfg in gemm_candidates(m):
        plans = {launch_plan(m, n, k, cfg, sms, sk): sk for sk in (False, True)}
        points += [(cfg, sk, True) for sk in plans.values()] + [(cfg, None, False)]
    return points


def linear_rows(name: str, k: int, n: int, rows: list[int], peak: float) -> list[dict[str, Any]]:
    weights = cold_weights(k, n)
    out = []
    for m in rows:
        x, ref = input_and_reference(m, weights[0])
        row: dict[str, Any] = {"linear": name, "M": m, "K": k, "N": n}
        row["floor_us"] = max(floors_us(m, n, k, peak))
        row["cublas_error"] = max_error(F.linear(x, weights[0]), ref)
        row["cublas_us"] = graph_us(lambda w, x=x: F.linear(x, w), weights)
        points = [time_point(x, weights, ref, *p) for p in candidate_points(m, n, k)]
        correct = [p for p in points if p["error"] < MAX_ERROR]
        row["wrong"] = [p for p in points if p["error"] >= MAX_ERROR]
        row["best"] = min(correct, key=lambda p: p["us"]) if correct else None
        row["default"] = _default_point(points, m, n, k)
        row["points"] = points
        print(json.dumps({key: v for key, v in row.items() if key != "points"}), flush=True)
        out.append(row)
    return out


def _default_point(points: list[dict[str, Any]], m: int, n: int, k: int) -> dict[str, Any] | None:
    """The point `dense_gemm` runs unasked: the default config, the chosen schedule, TMA."""
    cfg = gemm_config(m)
    _, sk_tiles = launch_plan(m, n, k, cfg, device_sms(torch.device("cuda")))
    matches = [p for p in points if (p["config"], p["sk_tiles"], p["tma"]) == (cfg, sk_tiles, True)]
    return matches[0] if matches else None


def step_totals(rows: list[dict[str, Any]], calls: dict[str, int]) -> dict[int, dict[str, float]]:
    """Milliseconds of a decode step's GEMMs at each row count (inf where a kernel was wrong)."""
    totals: dict[int, dict[str, float]] = {}
    for r in rows:
        t = totals.setdefault(r["M"], dict.fromkeys(("floor", "cublas", "default", "best"), 0.0))
        c = calls[r["linear"]] / 1e3
        t["floor"] += c * r["floor_us"]
        t["cublas"] += c * r["cublas_us"]
        for kind in ("default", "best"):
            t[kind] += c * (r[kind]["us"] if r[kind] else float("inf"))
    return totals


def _label(point: dict[str, Any] | None) -> str:
    if point is None:
        return "none correct"
    c = point["config"]
    shape = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"
    loads = "tma" if point["tma"] else "ptr"
    return f"{shape} {loads} {'sk' if point['sk_tiles'] else 'tiled'} ({point['tiles']} tiles)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_dense_gemm.json")
    args = ap.parse_args()
    peak = gemm_peak_tflops()
    sms = device_sms(torch.device("cuda"))
    print(f"bf16 GEMM peak (8192 x 4096 x 14336): {peak:.0f} TFLOP/s; {sms} SMs")
    rows = [r for name, k, n, _ in LINEARS for r in linear_rows(name, k, n, args.rows, peak)]
    totals = step_totals(rows, {name: calls for name, _, _, calls in LINEARS})
    print(f"\n{'linear':<8} {'M':>4} {'floor':>7} {'cuBLAS':>7} {'best':>7} {'x':>5}  best config")
    for r in rows:
        best = r["best"]["us"] if r["best"] else float("inf")
        print(
            f"{r['linear']:<8} {r['M']:>4} {r['floor_us']:>7.1f} {r['cublas_us']:>7.1f} "
            f"{best:>7.1f} {r['cublas_us'] / best:>5.2f}  {_label(r['best'])}"
        )
    wrong = [(r["linear"], r["M"], _label(p), p["error"]) for r in rows for p in r["wrong"]]
    for linear, m, label, error in wrong:
        print(f"WRONG or FAILED: {linear} M={m} {label}: max error {error:.3g}")
    print(
        f"\nA decode step's GEMMs, ms: {'M':>4} {'floor':>6} {'cuBLAS':>7} {'default':>8} {'best':>6}"
    )
    for m, t in sorted(totals.items()):
        print(
            f"{'':<27}{m:>4} {t['floor']:>6.2f} {t['cublas']:>7.2f} {t['default']:>8.2f} "
            f"{t['best']:>6.2f}"
        )
    write_report(args.output, peak, rows, totals)


if __name__ == "__main__":
    main()
