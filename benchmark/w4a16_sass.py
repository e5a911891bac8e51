"""Offline register and instruction counts of the W4A16 GEMV, compiled for an H200 (sm_90a)
by the installed Triton's ptxas, no GPU needed: the evidence behind the GEMV's tile choice.

    python benchmark/w4a16_sass.py [--old] [--block-n 256 512] [--block-k 128] [--warps 4]

For each variant: registers, spill bytes (stack), and the inner loop's SASS instructions (the
body of the K loop's backward branch) per weight a thread multiplies; with `--old`, the
kernel before the denormal rewrite (`w4a16_gemv_old.py`) beside it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTERS = {
    "x_ptr": "*bf16", "qweight_ptr": "*i32", "scales_ptr": "*bf16", "zeros_ptr": "*bf16",
    "partial_ptr": "*fp32", "out_ptr": "*bf16", "counter_ptr": "*i32", "bias_ptr": "*bf16",
}  # fmt: skip


# As Triton's launcher specializes them on an 8B linear: unit strides become constants, and
# pointers and the other integers are multiples of 16 (which lets it vectorize the loads).
UNIT_STRIDES = ("stride_xk", "stride_qn", "stride_sn", "stride_on")


def compile_sm90(
    kernel,
    constants: dict[str, int],
    num_warps: int,
    pointers: dict[str, str] = POINTERS,
    unit_strides: tuple[str, ...] = UNIT_STRIDES,
    num_stages: int | None = None,
    launch_pdl: bool = False,
    unhinted: tuple[str, ...] = (),
):
    """`kernel` compiled for sm_90a as its launcher would specialize it (the other benchmark
    kernels' counters pass their own pointer types and unit strides; tensor descriptors, typed
    `tensordesc<...>` in `pointers`, and float scalars, `fp32`, take no divisibility hint, nor
    the integers named in `unhinted`: those the launcher sees as not multiples of 16)."""
    names = kernel.arg_names
    constants = constants | dict.fromkeys(unit_strides, 1)
    signature = {n: pointers.get(n, "constexpr" if n in constants else "i32") for n in names}
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]]
        for n in names
        if n not in constants
        and n not in unhinted
        and not signature[n].startswith(("tensordesc", "fp"))
    }
    source = ASTSource(kernel, signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": num_warps} | ({"num_stages": num_stages} if num_stages else {})
    options |= {"launch_pdl": True} if launch_pdl else {}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", text).groups()
    return int(regs), int(stack)


def loop_body(sass: str) -> list[str]:
    """The instructions between the K loop's label and its backward branch (the longest loop)."""
    lines = [line.split("\t", 1)[-1].strip() for line in sass.splitlines()]
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.?L\w+:", line)}
    best: list[str] = []
    for i, line in enumerate(lines):
        target = re.search(r"BRA\s+(\.?L\w+)", line)
        if target and labels.get(target.group(1), i) < i:
            body = [x for x in lines[labels[target.group(1)] + 1 : i + 1] if not x.endswith(":")]
            best = max(best, body, key=len)
    return best


def op_counts(body: list[str]) -> collections.Counter:
    """Instructions of a SASS loop body by opcode (predicates dropped)."""
    return collections.Counter(re.match(r"(@!?U?P\w+\s+)?([A-Z0-9_]+)", x).group(2) for x in body)


def count(kernel, block_n: int, block_k: int, warps: int) -> dict:
    consts = dict(GROUP_SIZE=128, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=16)
    if "PDL" in kernel.arg_names:  # the current kernel's switches; the old one has none
        consts |= {"HAS_BIAS": False, "PDL": False}
    compiled = compile_sm90(kernel, consts, warps)
    regs, stack = resources(compiled.asm["cubin"])
    body = loop_body(compiled.asm["sass"])
    weights = block_n * block_k / (32 * warps)
    ops = op_counts(body)
    ptx = compiled.asm["ptx"]
    return {
        "block_n": block_n, "block_k": block_k, "warps": warps, "registers": regs,
        "stack_bytes": stack, "loop_instructions": len(body), "weights_per_thread": weights,
        "per_weight": round(len(body) / weights, 2), "ftz_in_ptx": ".ftz" in ptx,
        "top_ops": dict(ops.most_common(8)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", action="store_true", help="the kernel before the rewrite too")
    ap.add_argument("--block-n", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--block-k", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--warps", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    here = Path(__file__).resolve().parent
    sys.path[:0] = [
        str(here),
        str(here.parent),
    ]  # the benchmark-local old kernel; lmdeploy_kernels/
    from lmdeploy_kernels.w4a16_gemm import _w4a16_gemv_kernel

    kernels = {"new": _w4a16_gemv_kernel}
    if args.old:
        from w4a16_gemv_old import _w4a16_gemv_kernel as old

        kernels["old"] = old
    for name, kernel in kernels.items():
        for block_n in args.block_n:
            for block_k in args.block_k:
                for warps in args.warps:
                    print(name, count(kernel, block_n, block_k, warps), flush=True)


if __name__ == "__main__":
    main()
