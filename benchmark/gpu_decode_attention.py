"""Decode attention over the paged cache at serving batches: each launch against its KV bytes.

Through `pipeline()` the 256-row decode step's attention ran at ~69% of its KV bytes' time
(NOTES.md, session 6). This times `kernels.paged_decode_attention` alone for one layer of the
Llama-3-8B shape (32 heads, 8 KV heads, head_dim 128, bf16, blocks of 64 tokens scattered over
the cache) at batch sizes and contexts of the serving rows, for the launch the engine picks
today and for a sweep of (BLOCK_N, num_warps, num_stages, num_splits). Each case cycles over
enough layer caches that every call reads its K/V from HBM; each timed inside a CUDA graph.
The floor is the K/V bytes (plus q and out) at the copy rate measured here. The engine's and
the best launch are checked against the torch reference.

    python benchmark/gpu_decode_attention.py [--output FILE]
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

from kernels.paged_decode_attention import (  # noqa: E402
    paged_decode_attention,
    paged_decode_attention_ref,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 64
# (batch, context): batch 1 and the serving rows' decode batches at their mean contexts.
CASES = [(1, 1024), (1, 4096), (64, 1024), (256, 160), (256, 288), (256, 1024), (512, 288)]
SWEEP = list(itertools.product((32, 64, 128), (4, 8), (2, 3, 4)))  # BLOCK_N, warps, stages


def layer_caches(batch: int, context: int, copies: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`copies` layers' K/V caches with every sequence's blocks scattered at random."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * per_seq
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    out = []
    for _ in range(copies):
        table = torch.randperm(num_blocks, device="cuda", generator=g).view(batch, per_seq)
        out.append(
            {
                "k": torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g),
                "v": torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g),
                "table": table.to(torch.int32),
            }
        )
    return out


def case_rows(batch: int, context: int, bandwidth: float) -> dict[str, Any]:
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
    copies = max(2, math.ceil(4 * L2_BYTES / kv_bytes))
    caches = layer_caches(batch, context, copies, seed=batch * 7919 + context)
    q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)
    scale = HEAD_DIM**-0.5
    floor_us = (kv_bytes + 2 * 2 * q.numel()) / bandwidth * 1e6

    def timed(**launch) -> float:
        return graph_us(
            lambda c: paged_decode_attention(q, c["k"], c["v"], c["table"], lens, scale, **launch),
            caches,
        )

    def error(**launch) -> float:
        c = caches[0]
        got = paged_decode_attention(q, c["k"], c["v"], c["table"], lens, scale, **launch)
        return max_error(
            got, paged_decode_attention_ref(q, c["k"], c["v"], c["table"], lens, scale)
        )

    row: dict[str, Any] = {"batch": batch, "context": context, "floor_us": floor_us}
    row["engine_us"] = timed()
    row["engine_error"] = error()
    splits = [None, 1, 2, 4] if batch * KV_HEADS < 1024 else [None, 2]
    best = (row["engine_us"], {})
    sweep = []
    for (block_n, warps, stages), num_splits in itertools.product(SWEEP, splits):
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
    args = ap.parse_args()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    rows = [case_rows(b, c, bandwidth) for b, c in CASES]
    print(
        f"\n{'batch':>5} {'ctx':>5} {'floor':>7} {'engine':>7} {'best':>7} {'eng%':>5} {'best%':>6}  best"
    )
    for r in rows:
        print(
            f"{r['batch']:>5} {r['context']:>5} {r['floor_us']:>7.1f} {r['engine_us']:>7.1f} "
            f"{r['best_us']:>7.1f} {r['engine_of_floor']:>5.0%} {r['best_of_floor']:>6.0%}  "
            f"{r['best_launch']}"
        )
    report = {"device": torch.cuda.get_device_name(), "bandwidth": bandwidth, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
