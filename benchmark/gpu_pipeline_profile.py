"""Where a big decode batch's time goes through `pipeline()`: the GPU's busy share and its time by
kind of kernel, for the serving rows' decode workload (N sequences, 32 in / `--output-len` out).

`gpu_profile.py` drives the scheduler and runner on one thread; this script runs the whole engine
(engine thread, request streams, `pipe()` collecting) the way `gpu_serving_rows.py` does, so
whatever the host adds at a large batch shows as GPU idle time. The workload runs timed
`--timed-runs` times (output tok/s, ms a step, where the wall time went, kernels compiled and
full GC passes: the first run at a batch size may pay one-off costs); with `--host-profile` once
more under cProfile at a quarter of the length (`host_profile`); then under torch.profiler with
CUDA activity only (no CPU ops: the profiler's host cost would itself slow the engine). From the
trace: the window from the first to the last GPU event, the share of it the GPU was busy, the
idle time a step, and the GPU time a step by kind of kernel (`gpu_profile.by_kind`).

    python benchmark/gpu_pipeline_profile.py --batch 256 --output-len 256

Without a GPU it runs the same path as a smoke test (the GPU figures come out empty).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_profile import GPU_CATS, by_kind, kind_of, union_length  # noqa: E402
from step_trace import StepTrace, percentile  # noqa: E402
from workloads import random_prompt  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline  # noqa: E402


def _decode_run(
    pipe, batch: int, output_len: int, vocab: int, seed: int
) -> tuple[float, int, tuple[float, float]]:
    """Elapsed seconds, output tokens, and the run's (start, end) on perf_counter's clock."""
    rng = random.Random(seed)
    prompts = [random_prompt(32, vocab, rng) for _ in range(batch)]
    config = GenerationConfig(max_new_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    outs = pipe(prompts, gen_config=config)
    end = time.perf_counter()
    return end - start, sum(o.generate_token_len for o in outs), (start, end)


def phases(trace: StepTrace, run: tuple[float, float]) -> dict:
    """Where a run's wall time went, ms: before the first forward pass, in passes that carry
    prompt tokens, in decode-only passes (each from the previous pass's end to its own, so the
    host work between them is in it), after the last pass (collecting the outputs); and the
    slowest decode passes (a mean far above the median is a few slow steps, not slow steps)."""
    start, end = run
    steps = trace.steps
    if not steps:
        return {}
    prefill = decode = 0.0
    prev_end = steps[0][0]
    for _, s_end, _, _, is_decode in steps:
        if is_decode:
            decode += s_end - prev_end
        else:
            prefill += s_end - prev_end
        prev_end = s_end
    latencies = sorted(trace.decode_latencies(), reverse=True)
    return {
        "wall_ms": (end - start) * 1e3,
        "before_first_pass_ms": (steps[0][0] - start) * 1e3,
        "prefill_passes_ms": prefill * 1e3,
        "decode_passes_ms": decode * 1e3,
        "after_last_pass_ms": (end - steps[-1][1]) * 1e3,
        "slowest_decode_ms": [round(x * 1e3, 2) for x in latencies[:5]],
    }


@contextlib.contextmanager
def one_off_costs() -> Iterator[dict]:
    """Triton kernels compiled and the garbage collector's passes while the block runs: a new
    specialization (an integer argument that turns divisible by 16, say) compiles for hundreds
    of ms in the middle of a step, and a full collection pauses every thread."""
    seen: dict = {"compiled": [], "gc_ms": {0: 0.0, 1: 0.0}, "gc_full_ms": []}
    gc_start: list[float] = []

    def on_compile(*, fn, repr: str = "", **_) -> bool:  # noqa: A002 - Triton's keyword
        seen["compiled"].append(repr[:400] or getattr(fn, "name", str(fn)))
        return False  # compile as usual

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start.append(time.perf_counter())
            return
        if not gc_start:
            return
        ms = (time.perf_counter() - gc_start.pop()) * 1e3
        if info["generation"] == 2:
            seen["gc_full_ms"].append(round(ms, 2))
        else:
            seen["gc_ms"][info["generation"]] += ms

    try:
        from triton import knobs

        previous = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = on_compile
    except (ImportError, AttributeError):  # a Triton without knobs: compiles go unrecorded
        knobs = None
    gc.callbacks.append(on_gc)
    try:
        yield seen
    finally:
        gc.callbacks.remove(on_gc)
        if knobs is not None:
            knobs.runtime.jit_cache_hook = previous


def host_profile(pipe, batch: int, output_len: int, vocab: int, top: int = 30) -> str:
    """One more run under cProfile: where the host's time goes, GPU waits included (they show
    as time in the call that synchronizes). From Python 3.12 cProfile sees every thread (the
    engine's and the caller's) through sys.monitoring, and only one profiler can be active;
    before 3.12 it sees the caller's thread alone. cProfile slows Python severalfold: read
    shares, not milliseconds."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        _decode_run(pipe, batch, output_len, vocab, seed=98)
    finally:
        prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def gpu_window(trace: dict) -> dict[str, float]:
    """The GPU from its first to its last event: window, busy time and busy share (us)."""
    spans = [
        (e["ts"], e["ts"] + e["dur"])
        for e in trace["traceEvents"]
        if e.get("ph") == "X" and e.get("cat") in GPU_CATS
    ]
    if not spans:  # no GPU (a CPU smoke run): nothing to report
        return {"window_us": 0.0, "busy_us": 0.0, "busy_share": float("nan")}
    begin, end = min(a for a, _ in spans), max(b for _, b in spans)
    busy = union_length(spans)
    return {"window_us": end - begin, "busy_us": busy, "busy_share": busy / (end - begin)}


def gemm_launches(trace: dict, steps: int, top: int = 6) -> list[dict]:
    """The GEMM kernels by time, each name with its grid (the grid tells the rows it ran)."""
    totals: dict[tuple[str, str], list[float]] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X" or e.get("cat") != "kernel" or kind_of(e["name"]) != "gemm":
            continue
        key = (e["name"][:60], str(e.get("args", {}).get("grid")))
        totals.setdefault(key, [0.0, 0])
        totals[key][0] += e["dur"]
        totals[key][1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [
        {
            "kernel": k[0],
            "grid": k[1],
            "us_per_step": v[0] / steps,
            "launches_per_step": v[1] / steps,
        }
        for k, v in ranked
    ]


def step_summary(trace: StepTrace) -> dict:
    """The engine's forward passes: how many, their batch sizes, decode inter-token times."""
    sizes: dict[int, int] = {}
    for _, _, seqs, _, decode in trace.steps:
        if decode:
            sizes[seqs] = sizes.get(seqs, 0) + 1
    latencies = trace.decode_latencies()
    return {
        "forward_passes": len(trace.steps),
        "non_decode_passes": sum(not d for *_, d in trace.steps),
        "decode_batch_sizes": dict(sorted(sizes.items())),
        "decode_step_ms_p50": percentile(latencies, 0.5) * 1e3,
        "decode_step_ms_p90": percentile(latencies, 0.9) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--max-batch-size", type=int, default=512)
    ap.add_argument("--timed-runs", type=int, default=2)
    ap.add_argument("--host-profile", action="store_true", help="one more run under cProfile")
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval (s) for the run: how long the engine thread may wait for "
        "the GIL while the caller detokenizes (A/B; Python's default 0.005)",
    )
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/pipeline_profile.json"))
    args = ap.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    config = PytorchEngineConfig(
        load_format="dummy", max_batch_size=args.max_batch_size, session_len=4096
    )
    pipe = pipeline(args.model, backend_config=config)
    vocab = pipe.service.engine.runner.model.config.vocab_size
    _decode_run(pipe, 8, 8, vocab, seed=0)  # warm-up: kernels compiled, graphs captured
    steps_trace = StepTrace()
    steps_trace.install(pipe.service.engine.runner)
    timed = []
    for seed in range(1, 1 + args.timed_runs):  # the first run at this batch may pay one-off costs
        steps_trace.clear()
        with one_off_costs() as one_off:
            elapsed, tokens, run = _decode_run(pipe, args.batch, args.output_len, vocab, seed)
        timed.append(
            {
                "output_tok_s": tokens / elapsed,
                "ms_per_step": elapsed / args.output_len * 1e3,
                **step_summary(steps_trace),
                "phases": phases(steps_trace, run),
                **one_off,
            }
        )
        print(json.dumps(timed[-1]), flush=True)
    # A quarter of the output length: cProfile slows the engine thread several-fold.
    host_len = max(16, args.output_len // 4)
    host = host_profile(pipe, args.batch, host_len, vocab) if args.host_profile else ""
    if host:
        print(f"host profile:\n{host}", flush=True)
    cuda = torch.cuda.is_available()
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        p_elapsed, p_tokens, _ = _decode_run(pipe, args.batch, args.output_len, vocab, seed=99)
    pipe.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    window = gpu_window(trace)
    steps = args.output_len
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": args.model,
        "batch": args.batch,
        "output_len": args.output_len,
        "switch_interval_s": sys.getswitchinterval(),
        "timed": timed,
        "host_profile": host,
        "profiled": {
            "output_tok_s": p_tokens / p_elapsed,
            "ms_per_step": p_elapsed / steps * 1e3,
            "gpu_busy_share": window["busy_share"],
            "gpu_idle_us_per_step": (window["window_us"] - window["busy_us"]) / steps,
            "gpu_busy_us_per_step": window["busy_us"] / steps,
        },
        "by_kind": by_kind(trace, steps),
        "gemm_kernels": gemm_launches(trace, steps),
    }
    print(json.dumps(report["profiled"]))
    print("by kind:", json.dumps(report["by_kind"]))
    for row in report["gemm_kernels"]:
        print("gemm:", json.dumps(row))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
