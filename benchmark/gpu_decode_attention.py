"""Decode attention over the paged cache at serving batches: each launch against its KV bytes.

Through `pipeline()` the 256-row decode step's attention ran at ~69% of its KV bytes' time
(NOTES.md, session 6). This times `kernels.paged_decode_attention` alone for one layer of the
Llama-3-8B shape (32 heads, 8 KV heads, head_dim 128, bf16, blocks of 64 tokens scattered over
the cache) at batch sizes and contexts of the serving rows, for the launch the engine picks
today and for a sweep of (BLOCK_N, num_warps, num_stages, num_splits). Each case cycles over
enough layer caches that every call reads its K/V from HBM; each timed inside a CUDA graph.
Each case runs over a bf16 cache and over the int8 and int4 caches quantized from it
(`--quant-bits`, lmdeploy_kernels/kv_quant.py). The floor is the bytes a launch reads (the codes and each
slot's [.., 2] scale_zero of a quantized cache; q and out) at the copy rate measured here. The
engine's and the best launch are checked against the torch reference.

    python benchmark/gpu_decode_attention.py [--quant-bits 0 8 4] [--output FILE]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from gpu_generation import copy_bandwidth  # noqa: E402
from gpu_w4a16_gemv import L2_BYTES, graph_us, max_error  # noqa: E402

from lmdeploy_kernels.kv_quant import packed_dim, quantize_kv_ref  # noqa: E402
from lmdeploy_kernels.paged_decode_attention import (  # noqa: E402
    paged_decode_attention,
    paged_decode_attention_ref,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 64
# (batch, context): batch 1 and the serving rows' decode batches at their mean contexts.
CASES = [(1, 1024), (1, 4096), (64, 1024), (256, 160), (256, 288), (256, 1024), (512, 288)]
# Stage 1 for the quantized caches: unpipelined, their loop counts ~15% fewer SASS
# instructions (kv_attention_sass.py --stages 1 2).
SWEEP = list(itertools.product((32, 64, 128), (4, 8), (1, 2, 3, 4)))  # BLOCK_N, warps, stages


def kv_read_bytes(batch: int, context: int, bits: int) -> int:
    """K and V bytes one launch reads: bf16 values, or the codes and each slot's (scale, zero)
    in bf16."""
    slots = batch * context * KV_HEADS
    if bits == 0:
        return 2 * slots * HEAD_DIM * 2
    return 2 * slots * (packed_dim(HEAD_DIM, bits) + 2 * 2)


def floor_bytes(batch: int, context: int, bits: int) -> int:
    """A launch's bytes: K/V as read, q in and out back (bf16)."""
    return kv_read_bytes(batch, context, bits) + 2 * batch * HEADS * HEAD_DIM * 2


def layer_caches(
    batch: int, context: int, copies: int, seed: int, bits: int
) -> list[dict[str, torch.Tensor]]:
    """`copies` layers' K/V caches with every sequence's blocks scattered at random; with
    `bits`, quantized from the bf16 ones (codes in "k"/"v", their "k_sz"/"v_sz")."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * per_seq
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    out = []
    for _ in range(copies):
        table = torch.randperm(num_blocks, device="cuda", generator=g).view(batch, per_seq)
        layer = {"table": table.to(torch.int32)}
        for name in ("k", "v"):
            x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
            if bits:
                layer[name], layer[f"{name}_sz"] = quantize_kv_ref(x, bits)
                del x  # one bf16 cache at a time: int4's search holds 7 fp32 copies of it
            else:
                layer[name] = x
        out.append(layer)
    return out


def case_rows(
    batch: int,
    context: int,
    bits: int,
    bandwidth: float,
    sweep_launches: bool = True,
    fixed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`fixed`: options every launch of the case takes (the sweep varies the others)."""
    fixed = fixed or {}
    kv_bytes = kv_read_bytes(batch, context, bits)
    copies = max(2, math.ceil(4 * L2_BYTES / kv_bytes))
    caches = layer_caches(batch, context, copies, seed=batch * 7919 + context, bits=bits)
    q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)
    scale = HEAD_DIM**-0.5
    floor_us = floor_bytes(batch, context, bits) / bandwidth * 1e6

    def quant(c: dict[str, torch.Tensor]) -> dict[str, Any]:
        if not bits:
            return {}
        return dict(k_scale_zero=c["k_sz"], v_scale_zero=c["v_sz"], quant_bits=bits)

    def timed(**launch) -> float:
        return graph_us(
            lambda c: paged_decode_attention(
                q, c["k"], c["v"], c["table"], lens, scale, **quant(c), **fixed, **launch
            ),
            caches,
        )

    def error(**launch) -> float:
        c = caches[0]
        args = (q, c["k"], c["v"], c["table"], lens, scale)
        got = paged_decode_attention(*args, **quant(c), **fixed, **launch)
        return max_error(got, paged_decode_attention_ref(*args, **quant(c)))

    row: dict[str, Any] = {"bits": bits, "batch": batch, "context": context, "floor_us": floor_us}
    row |= fixed
    row["engine_us"] = timed()
    row["engine_error"] = error()
    splits = [None, 1, 2, 4] if batch * KV_HEADS < 1024 else [None, 2]
    best = (row["engine_us"], {})
    sweep = []
    for (block_n, warps, stages), num_splits in itertools.product(
        SWEEP if sweep_launches else [], splits
    ):
        launch = dict(block_n=block_n, num_warps=warps, num_stages=stages, num_splits=num_splits)
        try:
            us = timed(**launch)
        except Exception as exc:  # noqa: BLE001 - a launch the GPU cannot run (shared memory)
            sweep.append({**launch, "error": type(exc).__name__})
            continue
        sweep.append({**launch, "us": us})
        if us < best[0]:
            best = (us, launch)
    row["best_us"], row["best_launch"] = best
    row["best_error"] = error(**best[1])
    row["engine_of_floor"] = floor_us / row["engine_us"]
    row["best_of_floor"] = floor_us / row["best_us"]
    row["sweep"] = sweep
    print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=HERE / "results/gpu_decode_attention.json")
    ap.add_argument(
        "--quant-bits", type=int, nargs="+", default=[0, 8, 4], choices=[0, 8, 4],
        help="KV caches to run: 0 bf16, 8 int8, 4 int4 (quantized from the bf16 ones)",
    )  # fmt: skip
    ap.add_argument(
        "--cases", nargs="+", metavar="BATCH:CONTEXT", default=[f"{b}:{c}" for b, c in CASES],
        help="the (batch, context) cases (default: the serving rows')",
    )  # fmt: skip
    ap.add_argument("--no-sweep", action="store_true", help="the engine's launch only")
    ap.add_argument(
        "--transposed", action="store_true",
        help="quantized caches through the transposed tile loop (paged_decode_attention's option)",
    )  # fmt: skip
    args = ap.parse_args()
    cases = [tuple(int(x) for x in case.split(":")) for case in args.cases]
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    rows = [
        case_rows(
            b,
            c,
            bits,
            bandwidth,
            not args.no_sweep,
            {"transposed": True} if args.transposed and bits else {},
        )
        for b, c in cases
        for bits in args.quant_bits
    ]
    print(
        f"\n{'bits':>4} {'batch':>5} {'ctx':>5} {'floor':>7} {'engine':>7} {'best':>7} "
        f"{'eng%':>5} {'best%':>6}  best"
    )
    for r in rows:
        print(
            f"{r['bits']:>4} {r['batch']:>5} {r['context']:>5} {r['floor_us']:>7.1f} "
            f"{r['engine_us']:>7.1f} "
            f"{r['best_us']:>7.1f} {r['engine_of_floor']:>5.0%} {r['best_of_floor']:>6.0%}  "
            f"{r['best_launch']}"
        )
    report = {"device": torch.cuda.get_device_name(), "bandwidth": bandwidth, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
