"""The real scheduler over a KV-limited workload, with each step's GPU time from a cost model.

No model runs: the domain `Scheduler` plans every step of the 1000-request log-normal workload
(`workloads.sharegpt_like`, outputs to their drawn length) over `--blocks` KV blocks, and each
step is charged the time measured for its kind on an H200 (Llama-3-8B shape, bf16;
benchmark/NOTES.md, session 16): decode-only steps by batch size, steps with prompt tokens by
their token count. Prints steps, preemptions, recomputed prompt tokens and the predicted
requests/s for each admission headroom given, so a scheduling rule is counted before the GPU
measures it (`gpu_kv_quant.py`).

    python benchmark/scheduler_sim.py --blocks 512 --headroom 0 16 64
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import sharegpt_like  # noqa: E402

from lmdeploy.domain.block_allocator import BlockAllocator  # noqa: E402
from lmdeploy.domain.sampling_params import SamplingParams  # noqa: E402
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from lmdeploy.domain.sequence import Sequence  # noqa: E402

# Decode-only step (ms) by rows: the p50s of session 16's breakdowns (5.3 ms up to 64 rows,
# 8.6 at 65-128, 12.2 at 129-192, 14.0 at 193-256) and the d512 row's 19 ms.
DECODE_ROWS = [1, 64, 128, 192, 256, 512]
DECODE_MS = [4.05, 5.3, 8.6, 12.2, 14.0, 19.0]
# A step with prompt tokens (piecewise graphs up to 2048 tokens, eager above): 21.4 ms at
# ~525 tokens (451 prompt + 74 decodes), 101 ms at ~4215.
PROMPT_STEP_MS = (10.1, 0.0216)  # fixed, per token


def step_ms(rows: int, tokens: int, decode_only: bool) -> float:
    if not decode_only:
        return PROMPT_STEP_MS[0] + PROMPT_STEP_MS[1] * tokens
    i = min(bisect.bisect_left(DECODE_ROWS, rows), len(DECODE_ROWS) - 1)
    if i == 0:
        return DECODE_MS[0]
    low, high = DECODE_ROWS[i - 1], DECODE_ROWS[i]
    frac = min(1.0, (rows - low) / (high - low))
    return DECODE_MS[i - 1] + frac * (DECODE_MS[i] - DECODE_MS[i - 1])


def simulate(args: argparse.Namespace, headroom: int) -> dict:
    config = SchedulerConfig(
        max_batch_size=args.max_batch_size,
        max_num_batched_tokens=args.max_prefill_token_num,
        max_model_len=4096 + 2048,
        prefill_interval=args.prefill_interval,
        admission_headroom=headroom,
    )
    scheduler = Scheduler(config, BlockAllocator(args.blocks, 64, True))
    rng = random.Random(1)
    for n_in, n_out in sharegpt_like(args.num_requests, 0, 220, 200):
        prompt = [rng.randrange(1, 128000) for _ in range(n_in)]
        sampling = SamplingParams(max_new_tokens=n_out, ignore_eos=True)
        scheduler.add(Sequence(prompt, sampling, max_len=config.max_model_len))
    ms, steps, done, prompt_tokens = 0.0, 0, 0, 0
    while scheduler.has_work:
        plan = scheduler.schedule()
        if not plan:
            raise RuntimeError("the scheduler planned an empty step with work left")
        decodes = sum(
            n == 1 and s.num_output_tokens > 0
            for s, n in zip(plan.seqs, plan.num_scheduled, strict=True)
        )
        prompt_tokens += plan.num_tokens - decodes
        ms += step_ms(len(plan.seqs), plan.num_tokens, decodes == len(plan.seqs))
        steps += 1
        done += len(scheduler.postprocess(plan, [7] * len(plan.seqs)))
    counters = scheduler.counters
    return {
        "headroom": headroom,
        "steps": steps,
        "preemptions": counters.preemptions,
        "prompt_tokens_computed": prompt_tokens,
        "predicted_s": ms / 1e3,
        "requests_per_s": done / (ms / 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=512, help="KV blocks of 64 tokens")
    parser.add_argument("--headroom", type=int, nargs="+", default=[0, 16, 64])
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--max-prefill-token-num", type=int, default=4096)
    parser.add_argument("--prefill-interval", type=int, default=16)
    args = parser.parse_args()
    print(f"{args.num_requests} requests, {args.blocks} blocks of 64 tokens")
    print(
        f"{'headroom':>8} {'steps':>6} {'preempt':>8} {'prompt tok':>11} {'pred s':>7} {'req/s':>7}"
    )
    for headroom in args.headroom:
        r = simulate(args, headroom)
        print(
            f"{headroom:>8} {r['steps']:>6} {r['preemptions']:>8} {r['prompt_tokens_computed']:>11}"
            f" {r['predicted_s']:>7.1f} {r['requests_per_s']:>7.2f}"
        )


if __name__ == "__main__":
    main()
