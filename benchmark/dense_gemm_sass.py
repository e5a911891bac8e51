"""Offline build check of the stream-K dense GEMM (kernels/dense_gemm.py): every Hopper
candidate compiled for an H200 (sm_90a) by the installed Triton's ptxas, no GPU needed.

    python benchmark/dense_gemm_sass.py

For each (config, loads): registers, spill bytes, shared memory, and whether the K loop became
what it should on Hopper: wgmma tensor-core instructions, and its loads as TMA bulk copies
(`cp.async.bulk.tensor`) or, with pointer loads, as cp.async copies in flight `num_stages` deep.
A config that does not compile (shared memory, registers) says so here before a GPU run does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # w4a16_sass's helpers; kernels/

from w4a16_sass import compile_sm90, resources  # noqa: E402

POINTERS = {
    "x_in": "*bf16", "w_in": "*bf16", "bias_ptr": "*bf16", "partial_ptr": "*fp32",
    "out_ptr": "*bf16", "counter_ptr": "*i32",
}  # fmt: skip
UNIT_STRIDES = ("stride_xk", "stride_wk", "stride_on")


def check(config: dict[str, int], tma: bool) -> dict:
    from kernels.dense_gemm import _dense_gemm_kernel

    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    pointers = POINTERS | (
        {"x_in": f"tensordesc<bf16[{bm}, {bk}]>", "w_in": f"tensordesc<bf16[{bn}, {bk}]>"}
        if tma
        else {}
    )
    consts = dict(HAS_BIAS=False, EVEN_K=True, USE_TMA=tma, DOT_PRECISION="tf32")
    consts |= {key: v for key, v in config.items() if key.startswith("BLOCK")}
    row = {"config": config, "loads": "tma" if tma else "pointers"}
    try:
        compiled = compile_sm90(
            _dense_gemm_kernel, consts, config["num_warps"], pointers, UNIT_STRIDES,
            num_stages=config["num_stages"],
        )  # fmt: skip
    except Exception as e:  # reported, not raised: the other configs still get checked
        return row | {"error": repr(e)[:400]}
    regs, stack = resources(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return row | {
        "registers": regs, "stack_bytes": stack, "shared_bytes": compiled.metadata.shared,
        "wgmma": "wgmma.mma_async" in ptx, "tma_copies": "cp.async.bulk.tensor" in ptx,
        "cp_async": "cp.async.cg" in ptx or "cp.async.ca" in ptx,
    }  # fmt: skip


def main() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from kernels.dense_gemm import gemm_candidates

    for config in gemm_candidates(512):
        for tma in (True, False):
            print(json.dumps(check(config, tma)), flush=True)


if __name__ == "__main__":
    main()
