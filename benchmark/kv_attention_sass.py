"""Offline instruction counts of the paged decode attention's tile loop over a bf16, int8 and
int4 KV cache (lmdeploy_kernels/paged_decode_attention.py), compiled for an H200 (sm_90a) by the
installed Triton's ptxas, no GPU needed: does the quantized loop issue more than its bytes allow?

    python benchmark/kv_attention_sass.py [--bits 0 8 4] [--stages 2] [--repo PATH]
                                          [--combine-splits 16]

At the engine's launch for a batch of 256 on the Llama-3-8B shape (32 heads, 8 KV heads,
head_dim 128, blocks of 64 tokens: one split, BLOCK_N 64, 4 warps, 2 stages; `--stages` for
others): registers, spill
bytes, the loop body's SASS instructions per KV element a thread reads (K and V together) and
per byte of them, the top opcodes, and a digest of the loop's opcodes (equal digests: the same
loop). `--repo` counts another checkout's kernel, e.g. a worktree of the commit before a change.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # w4a16_sass's helpers

from w4a16_sass import compile_sm90, loop_body, op_counts, resources  # noqa: E402

HEAD_DIM, BLOCK_N, WARPS = 128, 64, 4
CONSTANTS = dict(
    GROUP=4, BLOCK_SIZE=64, NUM_SPLITS=1, BLOCK_S=1, BLOCK_H=16, BLOCK_N=BLOCK_N, BLOCK_D=HEAD_DIM,
    BLOCK_C=HEAD_DIM // 2, DOT_PRECISION="tf32", SLIDING=False, SOFTCAP=False, PDL=False,
    COMBINE=False, BLOCK_G=4,
)  # fmt: skip
# As the launcher sees a contiguous [blocks, 64, 8, packed] cache and its [.., 2] scale_zero.
UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_sd", "stride_btb", "stride_od")
# stride_bts is never specialised; the scale_zero head stride is 2 for a quantized cache.
UNHINTED = {0: ("stride_bts",), 8: ("stride_bts", "stride_sh"), 4: ("stride_bts", "stride_sh")}


def pointers(bits: int) -> dict[str, str]:
    cache = "*bf16" if bits == 0 else "*u8"
    types = dict.fromkeys(["q_ptr", "out_ptr", "k_sz_ptr", "v_sz_ptr"], "*bf16")
    types |= dict.fromkeys(["k_cache_ptr", "v_cache_ptr"], cache)
    types |= {"block_tables_ptr": "*i32", "context_lens_ptr": "*i32", "counter_ptr": "*i32"}
    types |= dict.fromkeys(["part_out_ptr", "part_lse_ptr"], "*fp32")
    return types | dict.fromkeys(["qk_scale", "softcap_log2"], "fp32")


def count(
    kernel,
    bits: int,
    stages: int,
    combine_splits: int = 0,
    block_n: int = BLOCK_N,
    transposed: bool = False,
) -> dict:
    # An older kernel may lack a constexpr (BLOCK_C): give it only those it declares.
    consts = {k: v for k, v in CONSTANTS.items() if k in kernel.arg_names}
    consts |= {"QUANT_BITS": bits, "BLOCK_N": block_n}
    if "TRANSPOSED" in kernel.arg_names:  # the heads as the dots' N: 8 wide
        consts |= {"TRANSPOSED": transposed, "BLOCK_H": 8 if transposed else 16}
    if "WORDS" in kernel.arg_names:  # as the launcher on a GPU: int8 codes loaded as words
        consts["WORDS"] = bits == 8
    if combine_splits:  # a batch-1 launch: its splits combined by the last one's program
        consts |= dict(NUM_SPLITS=combine_splits, BLOCK_S=combine_splits, COMBINE=True)
    compiled = compile_sm90(
        kernel, consts, WARPS, pointers(bits), UNIT_STRIDES, stages, unhinted=UNHINTED[bits]
    )
    regs, stack = resources(compiled.asm["cubin"])
    body = loop_body(compiled.asm["sass"])
    ops = op_counts(body)
    elements = 2 * block_n * HEAD_DIM / (32 * WARPS)  # K and V values a thread reads a tile
    element_bytes = {0: 2, 8: 1, 4: 0.5}[bits]
    opcodes = " ".join(x.split()[1] if x.startswith("@") else x.split()[0] for x in body)
    return {
        "bits": bits, "transposed": transposed, "block_n": block_n, "stages": stages, "combine_splits": combine_splits, "registers": regs, "stack_bytes": stack, "loop_instructions": len(body),
        "elements_per_thread": elements, "per_element": round(len(body) / elements, 2),
        "per_byte": round(len(body) / (elements * element_bytes), 2),
        "loop_digest": hashlib.sha1(opcodes.encode()).hexdigest()[:12],
        "top_ops": dict(ops.most_common(10)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[0, 8, 4])
    ap.add_argument("--stages", type=int, nargs="+", default=[2], help="num_stages to count")
    ap.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout to count")
    ap.add_argument(
        "--combine-splits", type=int, default=0, help="count the in-kernel combine of N splits"
    )
    ap.add_argument(
        "--block-n", type=int, nargs="+", default=[BLOCK_N], help="BLOCK_N (keys a tile) to count"
    )
    ap.add_argument(
        "--transposed", action="store_true", help="the quantized caches' transposed tile loop"
    )
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path.insert(0, str(args.repo.resolve()))
    from lmdeploy_kernels.paged_decode_attention import _paged_decode_kernel

    for stages, block_n, bits in itertools.product(args.stages, args.block_n, args.bits):
        transposed = args.transposed and bits != 0
        row = count(_paged_decode_kernel, bits, stages, args.combine_splits, block_n, transposed)
        print(row, flush=True)


if __name__ == "__main__":
    main()
