"""Offline register and instruction counts of the dense decode GEMV (lmdeploy_kernels/dense_gemv.py),
compiled for an H200 (sm_90a) by the installed Triton's ptxas, no GPU needed.

    python benchmark/dense_gemv_sass.py [--rows 1 2 4] [--block-n 8 16] [--block-k 256 512] [--warps 4]

For each variant: registers, spill bytes, the K loop's SASS instructions per weight a thread
multiplies (per weight and row of x), and its widest global load (LDG.E.128: 16 bytes).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # w4a16_sass's helpers; lmdeploy_kernels/

from w4a16_sass import compile_sm90, loop_body, op_counts, resources  # noqa: E402

POINTERS = {
    "x_ptr": "*bf16", "w_ptr": "*bf16", "bias_ptr": "*bf16", "partial_ptr": "*fp32",
    "out_ptr": "*bf16", "counter_ptr": "*i32",
}  # fmt: skip
# As Triton's launcher specializes them on an 8B linear: unit strides become constants, and
# pointers and the other integers are multiples of 16 (which lets it vectorize the loads).
UNIT_STRIDES = ("stride_xk", "stride_wk", "stride_on")


def compile_kernel(constants: dict[str, int], num_warps: int):
    from lmdeploy_kernels.dense_gemv import _dense_gemv_kernel as kernel

    return compile_sm90(kernel, constants, num_warps, POINTERS, UNIT_STRIDES)


def count(rows: int, block_n: int, block_k: int, warps: int) -> dict:
    consts = dict(
        HAS_BIAS=False, EVEN_K=True, BLOCK_M=rows, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=4,
        PDL=False,
    )  # fmt: skip
    compiled = compile_kernel(consts, warps)
    regs, stack = resources(compiled.asm["cubin"])
    body = loop_body(compiled.asm["sass"])
    weights = block_n * block_k / (32 * warps)
    ops = op_counts(body)
    loads = [x for x in body if "LDG" in x]
    return {
        "rows": rows, "block_n": block_n, "block_k": block_k, "warps": warps,
        "registers": regs, "stack_bytes": stack, "loop_instructions": len(body),
        "weights_per_thread": weights, "per_weight": round(len(body) / weights, 2),
        "per_weight_row": round(len(body) / weights / rows, 2),
        "loads": collections.Counter(x.split()[0 if not x.startswith("@") else 1] for x in loads),
        "top_ops": dict(ops.most_common(8)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1])
    ap.add_argument("--block-n", type=int, nargs="+", default=[8])
    ap.add_argument("--block-k", type=int, nargs="+", default=[512])
    ap.add_argument("--warps", type=int, nargs="+", default=[4])
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    for rows in args.rows:
        for block_n in args.block_n:
            for block_k in args.block_k:
                for warps in args.warps:
                    print(count(rows, block_n, block_k, warps), flush=True)


if __name__ == "__main__":
    main()
