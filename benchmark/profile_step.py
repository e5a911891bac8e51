"""Time and profile `runner.step` directly (no engine thread): prefill and decode at batch B.

    python benchmark/profile_step.py --batch 16 --context 128 --steps 20 [--profile decode|prefill] [--threads N]

Builds the runner through the container, admits B sequences through the real scheduler, then
times decode steps (median) and, with --profile, prints torch.profiler's op table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _scheduler_and_runner(batch: int):
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.infrastructure.factory import build_container

    c = build_container(None, PytorchEngineConfig(max_batch_size=batch, session_len=2048))
    built = c.built_model()
    return c.scheduler(), built.runner


def _seqs(batch: int, context: int, max_new: int):
    from lmdeploy.domain.sampling_params import SamplingParams
    from lmdeploy.domain.sequence import Sequence

    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)
    return [
        Sequence(torch.randint(100, 40000, (context,), generator=g).tolist(), params, 4096)
        for _ in range(batch)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", choices=["decode", "prefill"], default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sched, runner = _scheduler_and_runner(args.batch)
    warm = _seqs(args.batch, args.context, 2)  # first touches of fresh memory stay out
    for seq in warm:
        sched.add(seq)
    plan = sched.schedule()
    runner.step(plan)
    for seq in warm:
        sched.abort(seq)
    for seq in _seqs(args.batch, args.context, args.steps + 10):
        sched.add(seq)
    plan = sched.schedule()
    t = time.perf_counter()
    if args.profile == "prefill":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            sched.postprocess(plan, runner.step(plan).token_ids)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    else:
        sched.postprocess(plan, runner.step(plan).token_ids)
    prefill = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        plan = sched.schedule()
        t = time.perf_counter()
        out = runner.step(plan)
        times.append(time.perf_counter() - t)
        sched.postprocess(plan, out.token_ids)
    med = statistics.median(times[2:])
    print(
        f"threads={torch.get_num_threads()} batch={args.batch} context={args.context}: "
        f"prefill {prefill * 1e3:.0f} ms ({args.batch * args.context / prefill:.0f} tok/s), "
        f"decode median {med * 1e3:.1f} ms/step (min {min(times) * 1e3:.1f}), "
        f"{args.batch / med:.0f} tok/s"
    )
    if args.profile == "decode":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                plan = sched.schedule()
                sched.postprocess(plan, runner.step(plan).token_ids)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
