"""Where a decode step's time goes on the GPU: torch.profiler over ~20 decode steps of
`--batch` sequences (default 1) with `--context` prompt tokens each.

Drives the scheduler and the runner in this thread (no engine thread, so every launch and
each step's `decode_step` range land in one trace), over the Llama-3-8B shape with dummy
weights. From the chrome trace: each GPU event (kernel, copy, memset) is assigned to the step
whose range launched it (by correlation id); per step, GPU busy time over the step's wall
time, over the span of its own GPU work, and the idle gap from the previous step's last GPU
event to this step's first. With decode steps started ahead (the default under CUDA graphs) a
step's range launches the next step's work, so the timeline over the whole window says more:
GPU busy share, idle time per step, and the largest idle gaps between kernels. Run it with
LMDEPLOY_DECODE_AHEAD=0 for the step-by-step engine. Prints the tables; writes the trace and
the numbers to --out-dir, with the GPU time a step by kind of kernel (GEMM, attention, ...).
At large batches its figures disagreed with the whole engine's (its batch-256 decode attention
read less than 256 distinct contexts must, benchmark/NOTES.md session 6): use
`gpu_pipeline_profile.py` there until that is understood.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import time
from pathlib import Path

import torch

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
KINDS = {  # first match wins, on the lower-cased kernel name
    "all_reduce": ("allreduce", "all_reduce", "one_shot"),
    "broadcast": ("broadcast",),
    "attention": ("paged", "attention", "flash"),
    "gemm": ("nvjet", "gemm", "gemv", "cutlass", "sm90_xmma", "splitk", "fused_moe"),
    "copy": ("memcpy", "memset", "copy"),
}


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in KINDS.items() if any(key in low for key in keys)), "other")


def by_kind(trace: dict, steps: int) -> dict[str, dict[str, float]]:
    """GPU microseconds and launches a step for each kind of kernel, and the five kernels
    that take the most time (their names cut to 60 characters)."""
    times: dict[str, float] = {}
    launches: dict[str, int] = {}
    names: dict[str, float] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X" or e.get("cat") not in GPU_CATS:
            continue
        kind = kind_of(e["name"])
        times[kind] = times.get(kind, 0.0) + e["dur"]
        launches[kind] = launches.get(kind, 0) + 1
        names[e["name"][:60]] = names.get(e["name"][:60], 0.0) + e["dur"]
    top = sorted(names.items(), key=lambda kv: -kv[1])[:5]
    return {
        "us_per_step": {k: round(v / steps, 1) for k, v in sorted(times.items())},
        "launches_per_step": {k: round(v / steps, 1) for k, v in sorted(launches.items())},
        "top_kernels_us_per_step": {k: round(v / steps, 1) for k, v in top},
    }


def _scheduler_and_runner(model: str, max_batch: int):
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.infrastructure.factory import build_container

    config = PytorchEngineConfig(
        load_format="dummy", max_batch_size=max_batch, session_len=4096, cache_max_entry_count=0.5
    )
    c = build_container(model, config)
    return c.scheduler(), c.built_model().runner


def _seq(prompt_len: int, max_new: int, seed: int):
    from lmdeploy import GenerationConfig
    from lmdeploy.domain.sequence import Sequence

    params = GenerationConfig(max_new_tokens=max_new, ignore_eos=True).to_sampling_params()
    g = torch.Generator().manual_seed(seed)  # distinct prompts: each its own KV to read
    # Ids under 32000: inside the smallest vocabulary of the shipped shapes (Mistral, Mixtral).
    return Sequence(torch.randint(100, 32000, (prompt_len,), generator=g).tolist(), params, 4096)


def _step(sched, runner) -> None:
    plan = sched.schedule()
    sched.postprocess(plan, runner.step(plan).token_ids)


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def analyze(trace: dict) -> list[dict]:
    """Per decode step: wall, GPU busy, GPU span, busy share and the gap before it (us)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("name") == "decode_step" and e.get("cat") == "user_annotation"
    )
    starts = [s for s, _ in steps]
    launch_ts = {
        e["args"]["correlation"]: e["ts"]
        for e in events
        if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})
    }
    per_step: list[list[tuple[float, float]]] = [[] for _ in steps]
    for e in events:
        if e.get("cat") not in GPU_CATS:
            continue
        ts = launch_ts.get(e.get("args", {}).get("correlation"))
        i = bisect.bisect_right(starts, ts) - 1 if ts is not None else -1
        if 0 <= i < len(steps) and ts <= steps[i][1]:
            per_step[i].append((e["ts"], e["ts"] + e["dur"]))
    rows, last_end = [], None
    for (s, e), gpu in zip(steps, per_step, strict=True):
        if not gpu:
            continue
        first, last = min(a for a, _ in gpu), max(b for _, b in gpu)
        busy = union_length(gpu)
        rows.append(
            {
                "wall_us": e - s,
                "gpu_busy_us": busy,
                "gpu_span_us": last - first,
                "busy_of_span": busy / (last - first),
                "busy_of_wall": busy / (e - s),
                "gap_before_us": None if last_end is None else first - last_end,
                "gpu_events": len(gpu),
            }
        )
        last_end = last
    return rows


def timeline(trace: dict) -> dict:
    """The GPU over the profiled window (second to last `decode_step`: the first pays for the
    profiler's start, a ~0.5 ms first graph launch): busy share, idle microseconds per step,
    idle gaps longer than 20 us, and the five largest gaps."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("name") == "decode_step" and e.get("cat") == "user_annotation"
    )
    steps = steps[1:]
    begin, end = steps[0][0], steps[-1][1]
    gpu = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in GPU_CATS and begin <= e["ts"] <= end
    )
    merged: list[list[float]] = []
    for a, b in gpu:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    gaps = sorted((b[0] - a[1] for a, b in zip(merged, merged[1:], strict=False)), reverse=True)
    window = merged[-1][1] - merged[0][0]
    busy = sum(b - a for a, b in merged)
    return {
        "window_us": window,
        "busy_share": busy / window,
        "idle_us_per_step": (window - busy) / len(steps),
        "gaps_over_20us": sum(g > 20 for g in gaps),
        "largest_gaps_us": [round(g, 1) for g in gaps[:5]],
        "steps": len(steps),
    }


def summarize(rows: list[dict]) -> dict:
    def med(key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    return {
        k: med(k)
        for k in (
            "wall_us",
            "gpu_busy_us",
            "gpu_span_us",
            "busy_of_span",
            "busy_of_wall",
            "gap_before_us",
        )
    } | {"gap_max_us": max((r["gap_before_us"] or 0) for r in rows), "steps": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-config", default="llama-3-8b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoding together")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens of each sequence")
    ap.add_argument("--out-dir", type=Path, default=Path("benchmark/results"))
    ap.add_argument("--tag", default="", help="suffix of the output files (e.g. a baseline)")
    args = ap.parse_args()
    sched, runner = _scheduler_and_runner(args.model_config, max_batch=max(8, args.batch))
    for i in range(args.batch):
        sched.add(_seq(args.context + i % 7, args.steps + 100, seed=i))  # lengths differ a little
    while sched.waiting or any(s.num_output_tokens == 0 for s in sched.running):
        _step(sched, runner)  # prefill every sequence first
    for _ in range(10):  # prefill, then warm decode steps (compiles, first touches)
        _step(sched, runner)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(50):  # unprofiled: the profiler slows the host's launches down
        _step(sched, runner)
    unprofiled_ms = (time.perf_counter() - start) / 50 * 1e3
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    walls = []
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            with torch.profiler.record_function("decode_step"):
                _step(sched, runner)
            walls.append(time.perf_counter() - start)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    trace_path = args.out_dir / f"decode_trace{args.tag}.json"
    prof.export_chrome_trace(str(trace_path))
    rows = analyze(json.loads(trace_path.read_text()))
    summary = summarize(rows)
    summary["profiled_step_wall_ms_median"] = statistics.median(walls) * 1e3
    summary["unprofiled_step_ms_mean"] = unprofiled_ms
    print(
        f"{'step':>4} {'wall us':>8} {'GPU busy us':>11} {'busy/span':>9} {'busy/wall':>9} {'gap us':>7}"
    )
    for i, r in enumerate(rows):
        gap = "" if r["gap_before_us"] is None else f"{r['gap_before_us']:.0f}"
        print(
            f"{i:>4} {r['wall_us']:>8.0f} {r['gpu_busy_us']:>11.0f} {r['busy_of_span']:>9.3f} "
            f"{r['busy_of_wall']:>9.3f} {gap:>7}"
        )
    print("median:", json.dumps(summary))
    window = timeline(json.loads(trace_path.read_text()))
    window["decodes_ahead"] = runner.decodes_ahead
    window["ahead_started"] = runner.ahead_counters.started
    window["ahead_used"] = runner.ahead_counters.used
    print("timeline:", json.dumps(window))
    kinds = by_kind(json.loads(trace_path.read_text()), args.steps)
    print("by kind:", json.dumps(kinds))
    report = {
        "device": torch.cuda.get_device_name(),
        "steps": rows,
        "summary": summary,
        "timeline": window,
        "by_kind": kinds,
        "batch": args.batch,
        "context": args.context,
    }
    (args.out_dir / f"decode_profile{args.tag}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
