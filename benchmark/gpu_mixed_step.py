"""Where a serving step that mixes prefill with a big decode batch spends its time (issue 15).

The 1000-request workloads refill each finished request's slot with a new prompt, so a
quarter of their steps carry ~500 prompt tokens beside ~250 running decodes. This drives the
scheduler and the runner in this thread over the Llama-3-8B shape (dummy weights) with
`--decodes` running sequences, and times, unprofiled (median of `--repeats`):

- a decode-only step of the whole batch;
- a mixed step: the same decodes plus `--new-prompts` prompts of `--prompt-len` tokens;
- a prefill-only step of the same prompts (no decodes), the counted cost of the prefill part.

Then one profiled mixed step: GPU busy time against its wall time, the kernel launches it
makes, and the kernels and host-side ops that take the most time. The difference between the
mixed step and (decode step + prefill step) is what mixing costs beyond the work itself.
Decode steps are not started ahead here (LMDEPLOY_DECODE_AHEAD=0): a timed step would also
run the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from gpu_profile import _step


def _scheduler_and_runner(model: str, device: str, max_batch: int):
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.infrastructure.factory import build_container

    config = PytorchEngineConfig(
        device_type=device,
        load_format="dummy",
        dtype="bfloat16" if device == "cuda" else "float32",
        max_batch_size=max_batch,
        session_len=4096,
        cache_max_entry_count=0.5,
        prefill_interval=0,  # the new prompts join the very next step: that step is the mixed one
    )
    c = build_container(model, config)
    return c.scheduler(), c.built_model().runner


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _seq(prompt_len: int, max_new: int, seed: int):
    from lmdeploy import GenerationConfig
    from lmdeploy.domain.sequence import Sequence

    params = GenerationConfig(max_new_tokens=max_new, ignore_eos=True).to_sampling_params()
    g = torch.Generator().manual_seed(seed)
    return Sequence(torch.randint(100, 40000, (prompt_len,), generator=g).tolist(), params, 4096)


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return (time.perf_counter() - start) * 1e3


def _kernel_table(prof, limit: int = 15) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        gpu_us = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
        if gpu_us and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append({"name": e.key[:90], "calls": e.count, "gpu_ms": gpu_us / 1e3})
    return sorted(rows, key=lambda r: -r["gpu_ms"])[:limit]


def _host_table(prof, limit: int = 15) -> list[dict]:
    rows = [
        {"name": e.key[:90], "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CPU
    ]
    return sorted(rows, key=lambda r: -r["self_cpu_ms"])[:limit]


def _fill(sched, runner, decodes: int, context: int) -> None:
    """`decodes` sequences of `context` prompt tokens, prefilled and decoding."""
    for i in range(decodes):
        sched.add(_seq(context, 4000, seed=i))
    while sched.waiting or any(s.num_output_tokens == 0 for s in sched.running):
        _step(sched, runner)
    for _ in range(3):
        _step(sched, runner)


def _clear(sched) -> None:
    for seq in list(sched.running) + list(sched.waiting):
        sched.abort(seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", default="llama-3-8b", help="a shipped shape or an HF dir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--decodes", type=int, default=256)
    ap.add_argument("--context", type=int, default=300, help="prompt tokens of the decodes")
    ap.add_argument("--new-prompts", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmark/results/mixed_step_cuda.json"))
    args = ap.parse_args()
    os.environ.setdefault("LMDEPLOY_DECODE_AHEAD", "0")
    sched, runner = _scheduler_and_runner(
        args.model_config, args.device, max_batch=args.decodes + args.new_prompts
    )
    seeds = iter(range(10_000, 10**9))

    def prompts() -> list:
        return [_seq(args.prompt_len, 4000, next(seeds)) for _ in range(args.new_prompts)]

    _fill(sched, runner, args.decodes, args.context)
    decode_ms, mixed_ms, prefill_ms = [], [], []
    for _ in range(args.repeats):
        decode_ms.append(_timed(lambda: _step(sched, runner)))
        new = prompts()
        for seq in new:
            sched.add(seq)
        mixed_ms.append(_timed(lambda: _step(sched, runner)))
        for seq in new:  # the decode batch keeps its size
            sched.abort(seq)
    _clear(sched)
    for _ in range(args.repeats):
        for seq in prompts():
            sched.add(seq)
        prefill_ms.append(_timed(lambda: _step(sched, runner)))
        _clear(sched)

    prefill_profile = _profiled(args.device, lambda: _step(sched, runner), prompts, sched)
    _clear(sched)
    _fill(sched, runner, args.decodes, args.context)
    mixed_profile = _profiled(args.device, lambda: _step(sched, runner), prompts, sched)
    med = statistics.median
    report = {
        "decodes": args.decodes,
        "new_prompt_tokens": args.new_prompts * args.prompt_len,
        "decode_step_ms": med(decode_ms),
        "mixed_step_ms": med(mixed_ms),
        "prefill_step_ms": med(prefill_ms),
        "mixing_overhead_ms": med(mixed_ms) - med(decode_ms) - med(prefill_ms),
        "mixed": mixed_profile,
        "prefill": prefill_profile,
    }
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=1))
    for part in ("mixed", "prefill"):
        prof = report[part]
        print(f"\n{part} step, profiled: {json.dumps(prof['summary'])}")
        print(f"{'kernel':>90} {'calls':>6} {'GPU ms':>8}")
        for k in prof["top_kernels"]:
            print(f"{k['name']:>90} {k['calls']:>6} {k['gpu_ms']:>8.3f}")
        print(f"{'host op':>90} {'calls':>6} {'self ms':>8}")
        for k in prof["top_host_ops"]:
            print(f"{k['name']:>90} {k['calls']:>6} {k['self_cpu_ms']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def _profiled(device: str, step, prompts, sched) -> dict:
    """One step with new prompts added, under torch.profiler."""
    for seq in prompts():
        sched.add(seq)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _sync()
    with torch.profiler.profile(activities=activities) as prof:
        wall_ms = _timed(step)
    kernels = _kernel_table(prof, limit=1000)
    return {
        "summary": {
            "wall_ms": wall_ms,
            "gpu_kernel_ms": sum(k["gpu_ms"] for k in kernels),
            "kernel_launches": sum(k["calls"] for k in kernels),
        },
        "top_kernels": kernels[:15],
        "top_host_ops": _host_table(prof),
    }


if __name__ == "__main__":
    main()
