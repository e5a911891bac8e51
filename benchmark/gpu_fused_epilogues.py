"""On a GPU: the batch-1 decode with the projections' one-launch epilogues (q/k/v with rotary and
the K/V write, gate/up with SiLU-and-mul: backends/cuda/gemv_epilogues.py) gives the greedy ids
of the separate launches, and how many layers' projections took each.

    python benchmark/gpu_fused_epilogues.py [SHAPE ...] [--tokens 96] [--output FILE]
    python benchmark/gpu_fused_epilogues.py --chains [--output FILE]

For each shape (dummy weights, the same seed both times, bf16, CUDA graphs), two engines in
turn, the epilogues on, then off (`LMDEPLOY_FUSED_QKV_ROTARY` / `LMDEPLOY_FUSED_GATE_UP_SILU`),
each generating greedily from the same prompts one request at a time. Speed is measured by
gpu_families.py, a shape a process; this checks what it runs.

`--chains` times the kernels alone instead, at Llama-3-8B's and Qwen2.5-7B's shapes, one token:
the q/k/v GEMV then rotary (then the decode attention over 192 cached tokens) against the one
launch (then the attention), and the gate/up GEMV then SiLU-and-mul (then the down GEMV)
against the one launch (then the down GEMV), for each GEMV tile the engine times at load.
Microseconds a chain, replayed from a CUDA graph (PDL as the engine launches), each replay
cycling over weight copies spanning 4 L2s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

SWITCHES = ("LMDEPLOY_FUSED_QKV_ROTARY", "LMDEPLOY_FUSED_GATE_UP_SILU")


def greedy_ids(name: str, prompts: list[list[int]], tokens: int) -> tuple[list, Counter, dict]:
    """Each prompt's greedy ids, how many one-launch calls each epilogue made (while the decode
    graphs were captured, and eagerly), and layer 0's kernel choices (`kernel_choices`)."""
    import torch

    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues

    calls: Counter = Counter()
    originals = {n: getattr(gemv_epilogues, n) for n in ("qkv_rotary_gemv", "gate_up_silu_gemv")}

    def counted(fn_name):
        def run(*args, **kwargs):
            calls[fn_name] += 1
            return originals[fn_name](*args, **kwargs)

        return run

    for fn_name in originals:
        setattr(gemv_epilogues, fn_name, counted(fn_name))
    try:
        config = PytorchEngineConfig(
            load_format="dummy", dtype="bfloat16", max_batch_size=4, session_len=4096,
            cache_max_entry_count=0.3,
        )  # fmt: skip
        pipe = pipeline(name, backend_config=config)
        gen = GenerationConfig(max_new_tokens=tokens, ignore_eos=True, top_k=1)
        ids = [pipe([p], gen_config=gen)[0].token_ids for p in prompts]
        chosen = kernel_choices(pipe.service.engine.runner.model)
        pipe.close()
    finally:
        for fn_name, fn in originals.items():
            setattr(gemv_epilogues, fn_name, fn)
    torch.cuda.empty_cache()
    return ids, calls, chosen


def kernel_choices(model) -> dict[str, dict]:
    """Each dense linear's one-row GEMV tiles and epilogue tiles, where it runs the GEMV."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda.linear import DecodeGemv

    chosen = {}
    for name, module in model.named_modules():
        kernel = getattr(getattr(module, "method", None), "kernel", None)
        if isinstance(kernel, DecodeGemv) and ".0." in f".{name}.":  # layer 0 stands for all
            chosen[name] = {"gemv": kernel.config, "epilogue": kernel.epilogue}
    return chosen


# (model, (heads, kv_heads, dim), hidden, q/k/v bias, intermediate size)
CHAIN_SHAPES = [
    ("llama-3-8b", (32, 8, 128), 4096, False, 14336),
    ("qwen2.5-7b", (28, 4, 128), 3584, True, 18944),
]


def chain_rows() -> list[dict]:
    import sys

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    return [row for shape in CHAIN_SHAPES for row in shape_chain_rows(*shape)]


def shape_chain_rows(model, heads, hidden, has_bias, inter) -> list[dict]:
    import torch
    from gpu_w4a16_gemv import copies_for, graph_us

    from lmdeploy_kernels.dense_gemv import dense_gemv, gemv_candidates
    from lmdeploy_kernels.gate_up_silu_gemv import gate_up_silu_gemv
    from lmdeploy_kernels.paged_decode_attention import paged_decode_attention
    from lmdeploy_kernels.qkv_rotary_gemv import qkv_rotary_gemv
    from lmdeploy_kernels.rotary import rotary
    from lmdeploy_kernels.silu_and_mul import silu_and_mul

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = torch.bfloat16 if dev == "cuda" else torch.float32  # the interpreter: a smoke run
    num_heads, kv_heads, dim = heads
    n = (num_heads + 2 * kv_heads) * dim
    x = torch.randn(1, hidden, device=dev, dtype=bf16)
    angle = torch.rand(1, dim // 2, device=dev) * 6.3
    cos, sin = (torch.cat([f(angle)] * 2, -1) for f in (torch.cos, torch.sin))
    cache = [torch.randn(8, 64, kv_heads, dim, device=dev, dtype=bf16) for _ in range(2)]
    tables = torch.arange(4, device=dev, dtype=torch.int32)[None]
    lens = torch.tensor([192], device=dev, dtype=torch.int32)
    slots = torch.tensor([191], device=dev)
    qkv_w = [
        (torch.randn(n, hidden, device=dev, dtype=bf16),
         torch.randn(n, device=dev, dtype=bf16) if has_bias else None)
        for _ in range(copies_for(2 * n * hidden))
    ]  # fmt: skip
    gu_w = [
        torch.randn(2 * inter, hidden, device=dev, dtype=bf16)
        for _ in range(copies_for(4 * inter * hidden))
    ]
    down_w = torch.randn(hidden, inter, device=dev, dtype=bf16)
    sizes = [num_heads * dim, kv_heads * dim, kv_heads * dim]

    def attend(q):
        return paged_decode_attention(q, *cache, tables, lens, dim**-0.5)

    def separate_qkv(wb, cfg, then):
        q, k, v = (t.view(1, -1, dim) for t in dense_gemv(x, *wb, cfg).split(sizes, -1))
        rotary(q, k, cos, sin, inplace=True, kv_write=(v, *cache, slots))
        return then(q)

    def fused_qkv(wb, cfg, then):
        return then(qkv_rotary_gemv(x, *wb, heads, cos, sin, *cache, slots, cfg))

    def separate_mlp(w, cfg, then):
        return then(silu_and_mul(dense_gemv(x, w, None, cfg)))

    def fused_mlp(w, cfg, then):
        return then(gate_up_silu_gemv(x, w, None, cfg))

    def down(a):
        return dense_gemv(a, down_w)

    def alone(t):
        return t

    chains = [
        ("qkv+rotary", n, qkv_w, separate_qkv, fused_qkv, alone),
        ("qkv+rotary+attention", n, qkv_w, separate_qkv, fused_qkv, attend),
        ("gate_up+silu", 2 * inter, gu_w, separate_mlp, fused_mlp, alone),
        ("gate_up+silu+down", 2 * inter, gu_w, separate_mlp, fused_mlp, down),
    ]
    rows = []
    for chain, width, weights, separate, fused, then in chains:
        for cfg in gemv_candidates(width, hidden):
            if cfg["SPLIT_K"] != 1:
                continue
            row = {"model": model, "chain": chain, "config": cfg}
            for name, fn in (("separate_us", separate), ("fused_us", fused)):
                row[name] = graph_us(lambda w, fn=fn, c=cfg, t=then: fn(w, c, t), weights)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=["llama-3-8b", "qwen2.5-7b"])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/fused_epilogues.json"))
    ap.add_argument("--chains", action="store_true", help="time the kernels alone")
    args = ap.parse_args()
    if args.chains:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(chain_rows(), indent=1))
        return
    rng = random.Random(0)
    report = []
    for name in args.shapes:
        prompts = [[rng.randrange(100, 30000) for _ in range(n)] for n in (7, 61)]
        runs = {}
        for on in ("1", "0"):
            for switch in SWITCHES:
                os.environ[switch] = on
            runs[on] = greedy_ids(name, prompts, args.tokens)
        (ids_on, calls_on, chosen_on), (ids_off, calls_off, chosen_off) = runs["1"], runs["0"]
        gemv_on = {n: c["gemv"] for n, c in chosen_on.items()}
        gemv_off = {n: c["gemv"] for n, c in chosen_off.items()}
        first_diff = [
            next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), None)
            for x, y in zip(ids_on, ids_off, strict=True)
        ]
        row = {
            "model": name,
            "greedy_ids_equal": ids_on == ids_off,
            "first_differing_token": first_diff,
            "one_launch_calls_on": dict(calls_on),
            "one_launch_calls_off": dict(calls_off),
            # Timed at each engine's load: the same tiles in both, or the ids may differ anyway.
            "same_gemv_tiles": gemv_on == gemv_off,
            "layer0_kernels_on": chosen_on,
            "layer0_kernels_off": chosen_off,
        }
        print(json.dumps(row), flush=True)
        report.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
