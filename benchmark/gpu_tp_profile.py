"""Where a tensor-parallel batch-1 decode step goes, on every rank: torch.profiler over the
same window of decode-graph replays on each rank (tp_profile/sitecustomize.py), then per rank
the GPU busy share, the time per step in each kind of kernel (all-reduce, broadcast, GEMM,
attention, other) and the largest idle gaps. An all-reduce kernel's time includes its wait for
the slower rank, so a rank that starts its graph late shows up as the other's all-reduce time.

    python3 benchmark/gpu_tp_profile.py [--shape llama-3-8b] [--tp 2] [--out-dir DIR]
    python3 benchmark/gpu_tp_profile.py --device cpu --tiny        # a smoke run (gloo, eager)

The 8B shape at tp=2 ran at 50% of its floor on 2 H200s while its all-reduces, replayed alone,
took 12% of the step (benchmark/NOTES.md): this is the run that says where the rest goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_profile import GPU_CATS, kind_of, union_length  # noqa: E402


def analyze(trace: dict[str, Any], steps: int) -> dict[str, Any]:
    """One rank's window: GPU events (CPU ops on a GPU-less run), per kind and per step."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    device = [e for e in events if e.get("cat") in GPU_CATS]
    if not device:  # a CPU run: its aten ops stand in for kernels
        device = [e for e in events if e.get("cat") == "cpu_op"]
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in device)
    begin, end = spans[0][0], max(b for _, b in spans)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    gaps = sorted((b[0] - a[1] for a, b in zip(merged, merged[1:], strict=False)), reverse=True)
    per_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in device:
        per_kind[kind_of(e["name"])] += e["dur"]
        count[kind_of(e["name"])] += 1
    base_us = trace.get("baseTimeNanoseconds", 0) / 1e3  # the same clock on every rank
    return {
        "window_us": end - begin,
        "step_us": (end - begin) / steps,
        "busy_share": union_length(spans) / (end - begin),
        "us_per_step": {k: round(v / steps, 1) for k, v in sorted(per_kind.items())},
        "launches_per_step": {k: round(v / steps, 1) for k, v in sorted(count.items())},
        "largest_gaps_us": [round(g, 1) for g in gaps[:5]],
        "start_us_abs": base_us + begin,
    }


def profile(args: argparse.Namespace) -> None:
    """In the child process (sitecustomize already loaded): one request, decoded long enough
    to cover the profiled window."""
    from gpu_tp import write_shape

    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    cuda = args.device == "cuda"
    config = PytorchEngineConfig(
        tp=args.tp,
        device_type=args.device,
        load_format="dummy",
        dtype="bfloat16" if cuda else "float32",
        session_len=4096,
        cache_max_entry_count=0.8 if cuda else 0.1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        with pipeline(
            str(write_shape(args.shape, Path(tmp), args.tiny)), backend_config=config
        ) as pipe:
            tokens = args.skip + args.steps + 40
            gen = GenerationConfig(max_new_tokens=tokens, ignore_eos=True)
            pipe([list(range(100, 228))], gen_config=gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3-8b", help="llama-3-8b or llama-3-70b")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="decode steps profiled")
    ap.add_argument("--skip", type=int, default=60, help="decode steps before the window")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        profile(args)
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    traces = Path(tempfile.mkdtemp())
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(HERE / "tp_profile"), os.environ.get("PYTHONPATH", "")]),
        "TP_PROFILE_DIR": str(traces),
        "TP_PROFILE_FROM": str(args.skip),
        "TP_PROFILE_STEPS": str(args.steps),
        "TP_PROFILE_OP": "REPLAY" if args.device == "cuda" else "FORWARD",
    }
    subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, check=True)
    report: dict[str, Any] = {"shape": args.shape, "tp": args.tp, "steps": args.steps, "ranks": {}}
    for rank in range(args.tp):
        trace = json.loads((traces / f"rank{rank}.json").read_text())
        report["ranks"][rank] = analyze(trace, args.steps)
    starts = [r["start_us_abs"] for r in report["ranks"].values()]
    report["window_start_spread_us"] = max(starts) - min(starts)
    tag = f"{args.shape}_tp{args.tp}" + ("_tiny" if args.tiny else "")
    out = args.out_dir / f"tp_profile_{tag}.json"
    out.write_text(json.dumps(report, indent=2))
    for rank, r in report["ranks"].items():
        print(
            f"rank {rank}: step {r['step_us']:.0f} us, busy {100 * r['busy_share']:.1f}%, "
            f"gaps {r['largest_gaps_us']}"
        )
        print(f"  us a step by kind: {r['us_per_step']}")
        print(f"  launches a step:   {r['launches_per_step']}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
