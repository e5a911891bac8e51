"""An engine built after another in one process, the first closed but still referenced.

A user's script that closes one pipeline and builds the next (another model, other options)
keeps the first in a variable. Both engines here size their KV cache from the free memory
(`cache_max_entry_count`) and run the same requests (the 1000-request log-normal workload's
first `--num-requests`); the table prints the second against the first: its KV blocks, the
device memory left reserved after the first closed, and output tok/s. A second engine that
finds the first's cache and weights still reserved gets a fraction of the blocks.

    python benchmark/gpu_engine_after_engine.py --model llama-3-8b --num-requests 500
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import random_prompt, sharegpt_like  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline  # noqa: E402


def run_engine(args: argparse.Namespace, requests: list[tuple[int, int]]) -> tuple[dict, object]:
    """One engine's run; returns its figures and the closed pipeline (kept, as a user's
    variable would keep it)."""
    config = PytorchEngineConfig(
        load_format="dummy", max_batch_size=args.max_batch_size, session_len=4096 + 2048
    )
    pipe = pipeline(args.model, backend_config=config)
    rng = random.Random(1)
    prompts = [random_prompt(n_in, 128256, rng) for n_in, _ in requests]
    configs = [GenerationConfig(max_new_tokens=n_out, ignore_eos=True) for _, n_out in requests]
    pipe(prompts[:4], gen_config=configs[:4])  # warm-up
    start = time.perf_counter()
    outs = pipe(prompts, gen_config=configs)
    elapsed = time.perf_counter() - start
    blocks = pipe.service.engine.stats().num_blocks
    pipe.close()
    tokens = sum(o.generate_token_len for o in outs)
    return {
        "kv_blocks": blocks,
        "output_tokens_per_s": tokens / elapsed,
        "reserved_after_close_gib": torch.cuda.memory_reserved() / 2**30,
    }, pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--output", default="benchmark/results/gpu_engine_after_engine.json")
    args = parser.parse_args()
    requests = sharegpt_like(args.num_requests, 0, 220, 200)
    first, kept = run_engine(args, requests)
    second, _ = run_engine(args, requests)
    del kept
    rows = {"first": first, "second": second}
    print(f"{'engine':8} {'KV blocks':>10} {'tok/s':>9} {'reserved after close (GiB)':>27}")
    for name, row in rows.items():
        print(
            f"{name:8} {row['kv_blocks']:>10} {row['output_tokens_per_s']:>9.0f}"
            f" {row['reserved_after_close_gib']:>27.2f}"
        )
    ratio = second["output_tokens_per_s"] / first["output_tokens_per_s"]
    print(
        f"second / first: blocks {second['kv_blocks'] / first['kv_blocks']:.2f}, tok/s {ratio:.2f}"
    )
    Path(args.output).write_text(json.dumps({"args": vars(args), **rows}, indent=2))


if __name__ == "__main__":
    main()
