"""Time (and optionally profile) `runner.step` directly, with no engine thread: one prefill of
B prompts, then decode steps at batch B.

    python benchmark/profile_step.py [--batch 16] [--context 128] [--steps 20] [--sample] [--varied]
                                     [--threads N] [--profile decode|prefill]

Builds the runner through the container and drives it with the real scheduler. A first
prefill of other sequences runs untimed, so first touches of fresh memory stay out. Prints one
line (prefill time, median decode step, others% = CPU used by other processes meanwhile) and,
with --profile, torch.profiler's op table for that phase.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from profile_generation import OthersBusy


def _scheduler_and_runner(batch: int, gguf_int_kernels: bool = False):
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.infrastructure.factory import build_container

    config = PytorchEngineConfig(
        device_type="cpu",
        max_batch_size=batch,
        session_len=2048,
        cache_max_entry_count=0.25,
        gguf_int_kernels=gguf_int_kernels,
    )
    c = build_container(None, config)
    return c.scheduler(), c.built_model().runner


def _seqs(batch: int, context: int, max_new: int, sample: bool, varied: bool = False):
    from lmdeploy import GenerationConfig
    from lmdeploy.domain.sequence import Sequence

    g = torch.Generator().manual_seed(0)
    config = GenerationConfig(max_new_tokens=max_new, ignore_eos=True, do_sample=sample)
    params = config.to_sampling_params()
    lens = [context] * batch
    if varied:  # uniform in 16 .. 2 x context - 16: the same mean, a long tail to pad to
        lens = torch.randint(16, 2 * context - 15, (batch,), generator=g).tolist()
    return [
        Sequence(torch.randint(100, 40000, (n,), generator=g).tolist(), params, 4096) for n in lens
    ]


def _profiled(enabled: bool):
    activities = [torch.profiler.ProfilerActivity.CPU]
    return torch.profiler.profile(activities=activities) if enabled else _Nothing()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _step(sched, runner) -> None:
    plan = sched.schedule()
    sched.postprocess(plan, runner.step(plan).token_ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sample", action="store_true", help="GenerationConfig(do_sample=True)")
    ap.add_argument("--varied", action="store_true", help="prompt lengths spread around context")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", choices=["decode", "prefill"], default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sched, runner = _scheduler_and_runner(args.batch)
    warm = _seqs(args.batch, args.context, 2, args.sample)
    for seq in warm:
        sched.add(seq)
    runner.step(sched.schedule())
    for seq in warm:
        sched.abort(seq)
    for seq in _seqs(args.batch, args.context, args.steps + 10, args.sample, args.varied):
        sched.add(seq)

    with OthersBusy() as busy:
        with _profiled(args.profile == "prefill") as prefill_prof:
            start = time.perf_counter()
            _step(sched, runner)
            prefill = time.perf_counter() - start
        times = []
        with _profiled(args.profile == "decode") as decode_prof:
            for _ in range(args.steps):
                start = time.perf_counter()
                _step(sched, runner)
                times.append(time.perf_counter() - start)
    med = statistics.median(times[2:])
    print(
        f"threads={torch.get_num_threads()} batch={args.batch} context={args.context}"
        f"{' sample' if args.sample else ''}{' varied' if args.varied else ''}: prefill {prefill * 1e3:.0f} ms "
        f"({args.batch * args.context / prefill:.0f} tok/s), decode median {med * 1e3:.1f} "
        f"ms/step (min {min(times) * 1e3:.1f}), {args.batch / med:.0f} tok/s, "
        f"others {busy.pct:.0f}%"
    )
    for p in (prefill_prof, decode_prof):
        if isinstance(p, torch.profiler.profile):
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
