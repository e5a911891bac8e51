"""Offline counts of the W4A16 tensor-core GEMM (2..64 rows), old and new, compiled for an H200
(sm_90a) by the installed Triton, no GPU needed: layout conversions and shared-memory round
trips in the TTGIR's K loop, and the loop's SASS instructions per weight a thread dequantizes.

    python benchmark/w4a16_tc_sass.py [--tiles 16,64,128,4 64,64,128,4]

A tile is BLOCK_M,BLOCK_N,BLOCK_K,num_warps (group size 128, split K 4, bf16 x).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import triton

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the benchmark-local old kernel; lmdeploy_kernels/

from w4a16_sass import compile_sm90, loop_body, op_counts, resources  # noqa: E402


def count(kernel, block_m: int, block_n: int, block_k: int, warps: int) -> dict:
    consts = dict(
        GROUP_SIZE=128, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=4,
        DOT_PRECISION="tf32",
    )  # fmt: skip
    compiled = compile_sm90(kernel, consts, warps)
    loop = re.search(r"scf\.for.*?scf\.yield", compiled.asm["ttgir"], re.S).group(0)
    regs, stack = resources(compiled.asm["cubin"])
    body = loop_body(compiled.asm["sass"])
    ops = op_counts(body)
    weights = block_n * block_k / (32 * warps)
    return {
        "tile": [block_m, block_n, block_k, warps], "registers": regs, "stack_bytes": stack,
        "loop_convert_layout": loop.count("ttg.convert_layout"),
        "loop_local_alloc": loop.count("ttg.local_alloc"),
        "loop_local_load": loop.count("ttg.local_load"),
        "wgmma": "warp_group_dot" in loop, "loop_instructions": len(body),
        "per_weight": round(len(body) / weights, 2),
        "STS": sum(v for k, v in ops.items() if k.startswith("STS")),
        "LDS": sum(v for k, v in ops.items() if k.startswith("LDS")),
        "top_ops": dict(ops.most_common(10)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", nargs="+", default=["16,64,128,4", "64,64,128,4"])
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from w4a16_tc_old import _w4a16_gemm_kernel as old

    from lmdeploy_kernels.w4a16_gemm import _w4a16_gemm_kernel as new

    print("triton", triton.__version__)
    for tile in args.tiles:
        for name, kernel in (("old", old), ("new", new)):
            print(name, count(kernel, *map(int, tile.split(","))), flush=True)


if __name__ == "__main__":
    main()
