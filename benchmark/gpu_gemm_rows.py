"""The decode step's GEMMs at large batches: cuBLAS against cuBLASLt, per linear and summed over
a Llama-3-8B step, beside the FLOP and byte floors.

Through `pipeline()` a 256-row decode step spends ~6.4 ms in its GEMMs (~600 TFLOP/s; NOTES.md,
session 6), where the counted floor is max(15 GB of weights over the copy rate, 3.84 TFLOP over
the GEMM rate) ~= 4.8 ms. torch sends bf16 `F.linear` to cuBLAS by default; cuBLASLt's heuristics
pick other tiles (and can fuse nothing extra here). For each linear of the step (q/k/v, o,
gate/up, down, and the LM head) and each row count, the product is timed in a CUDA graph over
enough weight copies that every call reads its weight from HBM, once with each library
(`torch.backends.cuda.preferred_blas_library`), and checked against fp32.

    python benchmark/gpu_gemm_rows.py [--rows 64 128 256 512] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_w4a16_gemv import HBM_BYTES_PER_S, copies_for, graph_us, max_error  # noqa: E402

LAYERS = 32  # Llama-3-8B
# (linear, K, N, calls a step)
LINEARS = [
    ("qkv", 4096, 6144, LAYERS),
    ("o", 4096, 4096, LAYERS),
    ("gate_up", 4096, 28672, LAYERS),
    ("down", 14336, 4096, LAYERS),
    ("lm_head", 4096, 128256, 1),
]
LIBRARIES = ("cublas", "cublaslt")


def gemm_peak_tflops() -> float:
    """bf16 GEMM rate at a prefill-sized shape, where the library is at its best."""
    a = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)
    ms = graph_us(lambda w: F.linear(a, w), [b]) / 1e3
    return 2 * 8192 * 4096 * 14336 / ms / 1e9


def cold_weights(k: int, n: int) -> list[torch.Tensor]:
    """Enough [n, k] bf16 weight copies that calls taking them in turn read each from HBM."""
    return [
        torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        for _ in range(copies_for(2 * n * k))
    ]


def input_and_reference(m: int, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random [m, k] input and its product with `weight` in fp32."""
    x = torch.randn(m, weight.shape[1], device="cuda", dtype=torch.bfloat16)
    return x, x.float() @ weight.float().T


def floors_us(m: int, n: int, k: int, peak: float) -> tuple[float, float]:
    """The product's FLOP floor at `peak` TFLOP/s and its byte floor (bf16 W, x and y), us."""
    return 2 * m * n * k / (peak * 1e12) * 1e6, 2 * (n * k + m * k + m * n) / HBM_BYTES_PER_S * 1e6


def linear_rows(name: str, k: int, n: int, rows: list[int], peak: float) -> list[dict[str, Any]]:
    weights = cold_weights(k, n)
    out = []
    for m in rows:
        x, ref = input_and_reference(m, weights[0])
        row: dict[str, Any] = {"linear": name, "M": m, "K": k, "N": n}
        row["flop_floor_us"], row["byte_floor_us"] = floors_us(m, n, k, peak)
        for library in LIBRARIES:
            torch.backends.cuda.preferred_blas_library(library)
            row[f"{library}_error"] = max_error(F.linear(x, weights[0]), ref)
            row[f"{library}_us"] = graph_us(lambda w, x=x: F.linear(x, w), weights)
            row[f"{library}_tflops"] = 2 * m * n * k / row[f"{library}_us"] / 1e6
        print(json.dumps(row), flush=True)
        out.append(row)
    torch.backends.cuda.preferred_blas_library("cublas")
    return out


def step_totals(rows: list[dict[str, Any]], counts: dict[str, int]) -> dict[int, dict[str, float]]:
    """Milliseconds of a decode step's GEMMs at each row count, each library."""
    totals: dict[int, dict[str, float]] = {}
    for r in rows:
        t = totals.setdefault(r["M"], {key: 0.0 for key in (*LIBRARIES, "floor")})
        calls = counts[r["linear"]]
        for library in LIBRARIES:
            t[library] += calls * r[f"{library}_us"] / 1e3
        t["floor"] += calls * max(r["flop_floor_us"], r["byte_floor_us"]) / 1e3
    return totals


def write_report(output: Path, peak: float, rows: list[dict], totals: dict[int, dict]) -> None:
    """The per-linear rows and the per-step totals as JSON."""
    report = {"device": torch.cuda.get_device_name(), "peak_tflops": peak, "rows": rows}
    report["step_ms"] = {str(m): t for m, t in totals.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_gemm_rows.json")
    args = ap.parse_args()
    peak = gemm_peak_tflops()
    print(f"bf16 GEMM peak (8192 x 4096 x 14336): {peak:.0f} TFLOP/s")
    rows = [r for name, k, n, _ in LINEARS for r in linear_rows(name, k, n, args.rows, peak)]
    totals = step_totals(rows, {name: calls for name, _, _, calls in LINEARS})
    print(
        f"\n{'linear':<8} {'M':>4} {'floor us':>9} {'cuBLAS':>8} {'cuBLASLt':>9} {'Lt/cuBLAS':>9}"
    )
    for r in rows:
        floor = max(r["flop_floor_us"], r["byte_floor_us"])
        print(
            f"{r['linear']:<8} {r['M']:>4} {floor:>9.1f} {r['cublas_us']:>8.1f} "
            f"{r['cublaslt_us']:>9.1f} {r['cublas_us'] / r['cublaslt_us']:>9.2f}"
        )
    print(
        f"\nA Llama-3-8B decode step's GEMMs, ms: {'M':>4} {'floor':>7} {'cuBLAS':>8} {'cuBLASLt':>9}"
    )
    for m, t in sorted(totals.items()):
        print(f"{'':<39}{m:>4} {t['floor']:>7.2f} {t['cublas']:>8.2f} {t['cublaslt']:>9.2f}")
    write_report(args.output, peak, rows, totals)


if __name__ == "__main__":
    main()
