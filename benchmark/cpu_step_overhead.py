"""Host work of one CPU decode step on the default model, counted and split (1 stream).

    python benchmark/cpu_step_overhead.py [--context 128] [--steps 100] [--threads 1] [--int]

Drives the runner with the real scheduler (as profile_step.py) and prints, per decode step:
- Python function calls (cProfile) and aten ops (torch.profiler): counts, so a busy machine
  does not move them;
- CPU seconds of the calling thread (`time.thread_time`, which another process's load does
  not inflate as it does wall time), split into the C kernels (time inside their Python
  wrappers) and everything else: the host work that is not math. With --threads 1 that
  thread does all the work.
`--int` runs the GGUF int8-activation kernels (gguf_int_kernels) instead of the default.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import time

import torch
from profile_step import _scheduler_and_runner, _seqs, _step

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_float, gguf_linear
from lmdeploy.adapters.engines.pytorch.backends.cpu import ops as cpu_ops
from lmdeploy.adapters.engines.pytorch.layers import attention as attention_layer

# (module, function) -> the kernel it wraps; their time counts as math.
_KERNELS = [
    (gguf_float, "matmul", "matmul"),
    (gguf_linear, "matmul", "matmul"),
    (gguf_linear, "dequantize_rows", "embedding"),
    (cpu_ops, "_add_rms_norm", "rms_norm"),
    (cpu_ops, "silu_and_mul", "silu"),
    (cpu_ops, "rotary_write_kv", "rotary"),
    (attention_layer, "paged_decode_attention_cpu", "attention"),
]


def _time_kernels() -> dict[str, float]:
    spent: dict[str, float] = collections.defaultdict(float)
    for module, name, kind in _KERNELS:
        inner = getattr(module, name)

        def timed(*args, _inner=inner, _kind=kind, **kwargs):
            start = time.thread_time()
            out = _inner(*args, **kwargs)
            spent[_kind] += time.thread_time() - start
            return out

        setattr(module, name, timed)
    return spent


def _counts(sched, runner, steps: int) -> tuple[float, float, collections.Counter]:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(steps):
        _step(sched, runner)
    profile.disable()
    calls = sum(v[1] for v in pstats.Stats(profile).stats.values()) / steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            _step(sched, runner)
    ops = collections.Counter({e.key: e.count / steps for e in prof.key_averages()})
    return calls, sum(ops.values()), ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--int", action="store_true", help="gguf_int_kernels=True")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spent = _time_kernels()
    sched, runner = _scheduler_and_runner(1, gguf_int_kernels=args.int)
    for seq in _seqs(1, args.context, 3 * args.steps + 40, False):
        sched.add(seq)
    for _ in range(10):  # the prefill, then warm decode steps
        _step(sched, runner)
    calls, num_ops, ops = _counts(sched, runner, 20)
    spent.clear()
    start, wall = time.thread_time(), time.perf_counter()
    for _ in range(args.steps):
        _step(sched, runner)
    cpu = (time.thread_time() - start) / args.steps
    wall = (time.perf_counter() - wall) / args.steps
    kernels = sum(spent.values()) / args.steps
    print(f"per decode step: {calls:.0f} Python calls, {num_ops:.0f} aten ops")
    print("  aten ops: " + ", ".join(f"{k} {v:g}" for k, v in ops.most_common(12)))
    print(
        f"  CPU {cpu * 1e3:.2f} ms (wall {wall * 1e3:.2f} ms, threads={args.threads}): kernels "
        f"{kernels * 1e3:.2f} ms ("
        + ", ".join(f"{k} {v / args.steps * 1e3:.2f}" for k, v in spent.items())
        + f"), other {(cpu - kernels) * 1e3:.2f} ms = {100 * (cpu - kernels) / cpu:.0f}%"
    )


if __name__ == "__main__":
    main()
