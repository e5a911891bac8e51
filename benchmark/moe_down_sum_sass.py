"""Offline register and instruction counts of the MoE down projection + token sum
(kernels/moe_down_sum.py), compiled for an H200 (sm_90a) by the installed Triton's ptxas, no
GPU needed.

    python benchmark/moe_down_sum_sass.py [--top-k 8 2] [--block-p 2 4] [--block-n 8 16] [--warps 4]

For each variant: registers, spill bytes, the step loop's SASS instructions per w2 weight a
thread multiplies, and its global loads by width (LDG.E.128: 16 bytes).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # w4a16_sass's helpers; kernels/

from w4a16_sass import compile_sm90, loop_body, op_counts, resources  # noqa: E402

POINTERS = {
    "act_ptr": "*bf16", "w2_ptr": "*bf16", "topk_weights_ptr": "*fp32", "topk_ids_ptr": "*i32",
    "out_ptr": "*bf16",
}  # fmt: skip
# As Triton's launcher specializes them at Qwen3-30B-A3B's shape: unit strides become
# constants, the other integers and the pointers are multiples of 16.
UNIT_STRIDES = ("stride_ak", "stride_wk", "stride_on")


def compile_kernel(constants: dict[str, int], num_warps: int):
    from kernels.moe_down_sum import _moe_down_sum_kernel as kernel

    return compile_sm90(kernel, constants, num_warps, POINTERS, UNIT_STRIDES)


def count(top_k: int, block_p: int, block_n: int, block_k: int, warps: int) -> dict:
    consts = dict(TOP_K=top_k, EVEN_K=True, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k)
    compiled = compile_kernel(consts, warps)
    regs, stack = resources(compiled.asm["cubin"])
    body = loop_body(compiled.asm["sass"])
    weights = block_p * block_n * block_k / (32 * warps)
    ops = op_counts(body)
    loads = [x.split()[0 if not x.startswith("@") else 1] for x in body if "LDG" in x]
    return {
        "top_k": top_k, "block_p": block_p, "block_n": block_n, "block_k": block_k,
        "warps": warps, "registers": regs, "stack_bytes": stack,
        "loop_instructions": len(body), "weights_per_thread": weights,
        "per_weight": round(len(body) / weights, 2), "loads": collections.Counter(loads),
        "top_ops": dict(ops.most_common(8)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top-k", type=int, nargs="+", default=[8])
    ap.add_argument("--block-p", type=int, nargs="+", default=[4])
    ap.add_argument("--block-n", type=int, nargs="+", default=[8])
    ap.add_argument("--block-k", type=int, nargs="+", default=[256])
    ap.add_argument("--warps", type=int, nargs="+", default=[4])
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    for top_k in args.top_k:
        for block_p in args.block_p:
            for block_n in args.block_n:
                for block_k in args.block_k:
                    for warps in args.warps:
                        print(count(top_k, block_p, block_n, block_k, warps), flush=True)


if __name__ == "__main__":
    main()
