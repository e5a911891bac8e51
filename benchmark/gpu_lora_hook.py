"""The LoRA hooks of one Llama-3-8B layer on a GPU, alone: what a decode step's adapters cost.

The layer's four adapted linears (qkv, o, gate_up, down), --adapters rank --rank adapters
resident, --rows decode rows over them (row i: adapter i % adapters; every --base-every-th row
the base model's), bf16. Each linear's delta through `add_lora` (the hooks' CUDA path) is
first checked against `lora_ref`; then the four are captured in a CUDA graph, as the engine's
decode graphs capture them, and replayed: time per layer and x32 for a step, beside the four
base GEMMs of the same layer in a graph too. torch.profiler counts the GPU kernels and copies
one layer's hooks launch (benchmark/NOTES.md predicts 8).

--smoke: tiny shapes on the CPU, the checks only (run it with TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from cuda_graph_timing import graph_ms

from lmdeploy.adapters.engines.pytorch.backends.cuda.lora import GraphSegments, add_lora
from lmdeploy.kernels.lora import lora_ref

LAYERS = 32  # Llama-3-8B
# name -> (in, output shard sizes); Llama-3-8B: hidden 4096, intermediate 14336, 8 KV heads
LLAMA_3_8B = {
    "qkv": (4096, [4096, 1024, 1024]),
    "o": (4096, [4096]),
    "gate_up": (4096, [14336, 14336]),
    "down": (14336, [4096]),
}
TINY = {"qkv": (64, [64, 32, 32]), "o": (64, [64]), "gate_up": (64, [96, 96]), "down": (96, [64])}


def _linear(in_size: int, sizes: list[int], args, device, dtype) -> dict:
    gen = torch.Generator(device=device).manual_seed(in_size + sum(sizes))
    shape_a = (args.adapters, len(sizes) * args.rank, in_size)
    lora_a = torch.randn(shape_a, generator=gen, device=device) * in_size**-0.5
    lora_b = torch.randn(args.adapters, sum(sizes), args.rank, generator=gen, device=device)
    return {
        "x": torch.randn(args.rows, in_size, generator=gen, device=device).to(dtype),
        "out": torch.randn(args.rows, sum(sizes), generator=gen, device=device).to(dtype),
        "lora_a": lora_a.to(dtype),
        "lora_b": (lora_b * args.rank**-0.5).to(dtype),
        "weight": torch.randn(sum(sizes), in_size, generator=gen, device=device).to(dtype),
        "sizes": sizes,
    }


def _check(linears: dict, segments, scales, row_slots: torch.Tensor, dtype) -> None:
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for name, lin in linears.items():
        out = lin["out"].clone()
        add_lora(lin["x"], out, lin["lora_a"], lin["lora_b"], segments, scales, lin["sizes"])
        starts = [sum(lin["sizes"][:i]) for i in range(len(lin["sizes"]))]
        shards = list(zip(starts, lin["sizes"], strict=True))
        ref = lora_ref(lin["x"], lin["lora_a"], lin["lora_b"], row_slots, scales, shards)
        torch.testing.assert_close((out.float() - lin["out"].float()), ref, **tol, msg=name)
        print(f"{name}: matches lora_ref", flush=True)


def _count_gpu_ops(fn) -> dict[str, int]:
    """GPU kernels, copies and fills one call of `fn` runs, by name."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def main(args) -> None:
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if args.smoke:
        args.rows, args.adapters, args.rank = min(args.rows, 12), min(args.adapters, 3), 8
    row_slots = [
        -1 if args.base_every and i % args.base_every == args.base_every - 1 else i % args.adapters
        for i in range(args.rows)
    ]
    staged = GraphSegments(args.adapters, args.rows, device)
    staged.load(row_slots)
    segments = staged.view(args.rows)
    scales = torch.full((args.adapters,), 2.0, device=device)
    linears = {
        name: _linear(in_size, sizes, args, device, dtype)
        for name, (in_size, sizes) in (TINY if args.smoke else LLAMA_3_8B).items()
    }
    _check(linears, segments, scales, torch.tensor(row_slots, device=device), dtype)
    if args.smoke:
        return

    def hooks() -> None:
        for lin in linears.values():
            add_lora(
                lin["x"], lin["out"], lin["lora_a"], lin["lora_b"], segments, scales, lin["sizes"]
            )

    def base() -> None:
        for lin in linears.values():
            torch.matmul(lin["x"], lin["weight"].T, out=lin["out"])

    counts = _count_gpu_ops(hooks)
    report = {
        "device": torch.cuda.get_device_name(),
        "rows": args.rows,
        "adapters": args.adapters,
        "rank": args.rank,
        "base_rows": row_slots.count(-1),
        "gpu_ops_per_layer": sum(counts.values()),
        "gpu_ops_by_name": counts,
        "lora_us_per_layer": graph_ms(hooks) * 1e3,
        "base_gemms_us_per_layer": graph_ms(base) * 1e3,
    }
    report["lora_ms_per_step"] = report["lora_us_per_layer"] * LAYERS / 1e3
    report["base_gemms_ms_per_step"] = report["base_gemms_us_per_layer"] * LAYERS / 1e3
    print(json.dumps(report, indent=2))
    out = Path(args.output or "benchmark/results/gpu_lora_hook.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--base-every", type=int, default=0, help="0: no base-model rows")
    parser.add_argument("--smoke", action="store_true", help="tiny, CPU, checks only")
    parser.add_argument("--output", default=None)
    main(parser.parse_args())
