"""On a GPU: the batch-1 decode with the projections' one-launch epilogues (q/k/v with rotary and
the K/V write, gate/up with SiLU-and-mul: backends/cuda/gemv_epilogues.py) gives the greedy ids
of the separate launches, and how many layers' projections took each.

    python benchmark/gpu_fused_epilogues.py [SHAPE ...] [--tokens 96] [--output FILE]

For each shape (dummy weights, the same seed both times, bf16, CUDA graphs), two engines in
turn, the epilogues on, then off (`LMDEPLOY_FUSED_QKV_ROTARY` / `LMDEPLOY_FUSED_GATE_UP_SILU`),
each generating greedily from the same prompts one request at a time. Speed is measured by
gpu_families.py, a shape a process; this checks what it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

SWITCHES = ("LMDEPLOY_FUSED_QKV_ROTARY", "LMDEPLOY_FUSED_GATE_UP_SILU")


def greedy_ids(name: str, prompts: list[list[int]], tokens: int) -> tuple[list, Counter]:
    """Each prompt's greedy ids, and how many one-launch calls each epilogue made (while the
    decode graphs were captured, and eagerly)."""
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
        pipe.close()
    finally:
        for fn_name, fn in originals.items():
            setattr(gemv_epilogues, fn_name, fn)
    torch.cuda.empty_cache()
    return ids, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=["llama-3-8b", "qwen2.5-7b"])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/fused_epilogues.json"))
    args = ap.parse_args()
    rng = random.Random(0)
    report = []
    for name in args.shapes:
        prompts = [[rng.randrange(100, 30000) for _ in range(n)] for n in (7, 61)]
        runs = {}
        for on in ("1", "0"):
            for switch in SWITCHES:
                os.environ[switch] = on
            runs[on] = greedy_ids(name, prompts, args.tokens)
        (ids_on, calls_on), (ids_off, calls_off) = runs["1"], runs["0"]
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
        }
        print(json.dumps(row), flush=True)
        report.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
