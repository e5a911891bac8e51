"""Tensor parallelism on 2 GPUs: Llama-3-8B shape at tp=1 and tp=2, the Llama-3-70B shape at
tp=2 (dummy bf16 weights, CUDA graphs), and the NCCL all-reduces of one decode step.

    python benchmark/gpu_tp.py [--requests 1000] [--output FILE]
    python benchmark/gpu_tp.py --device cpu --tiny --requests 8    # a smoke run, no GPU (gloo)

Each case runs in its own process: batch-1 decode (128 prompt tokens, 128 generated, timed
per step by StepTrace as gpu_generation.py does), then the throughput of `--requests`
ShareGPT-like requests submitted together. The batch-1 floor counts the device copy bandwidth
of one GPU times tp over the bytes of every weight (each rank reads its half). Beside it, in
two fresh processes, the NCCL all-reduce of a batch-1 step: 2 per layer of [1, hidden] bf16,
timed alone, as a fraction of the tp=2 step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPE_70B = {
    "num_hidden_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
}
# (shape, tp, variant): "nccl" turns the one-shot all-reduce of small sums off (the A/B).
CASES = [
    ("llama-3-8b", 1, ""),
    ("llama-3-8b", 2, ""),
    ("llama-3-8b", 2, "nccl"),
    ("llama-3-70b", 2, ""),
]
SESSION_LEN = 4096


def write_shape(name: str, directory: Path, tiny: bool) -> Path:
    from gpu_families import tiny_config

    from lmdeploy.adapters.loaders import dummy

    cfg = dummy.shipped_config("llama-3-8b")
    if name == "llama-3-70b":
        cfg |= SHAPE_70B
    if tiny:
        cfg = tiny_config(cfg)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory  # no tokenizer: the prompts are token ids


def throughput(pipe, num: int) -> dict[str, Any]:
    from workloads import random_prompt, sharegpt_like

    from lmdeploy import GenerationConfig

    rng = random.Random(0)
    vocab = pipe.service.engine.runner.model.config.vocab_size
    pairs = sharegpt_like(num, cap=SESSION_LEN // 2)
    prompts = [random_prompt(n_in, vocab, rng) for n_in, _ in pairs]
    gens = [GenerationConfig(max_new_tokens=n_out, ignore_eos=True) for _, n_out in pairs]
    start = time.perf_counter()
    outs = pipe(prompts, gen_config=gens)
    total = time.perf_counter() - start
    tokens = sum(o.generate_token_len for o in outs)
    return {"requests": num, "total_s": total, "output_tokens_per_s": tokens / total}


def measure(name: str, tp: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from gpu_generation import copy_bandwidth, decode_rows, step_weight_bytes
    from step_trace import StepTrace

    from lmdeploy import PytorchEngineConfig, pipeline
    from lmdeploy.adapters.engines.pytorch.distributed import parallel_state

    cuda = args.device == "cuda"
    bandwidth = copy_bandwidth(device=args.device, num_bytes=(2 << 30) if cuda else (64 << 20))
    config = PytorchEngineConfig(
        tp=tp,
        device_type=args.device,
        load_format="dummy",
        dtype="bfloat16" if cuda else "float32",
        session_len=SESSION_LEN,
        cache_max_entry_count=0.8 if cuda else 0.1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pipe = pipeline(str(write_shape(name, Path(tmp), args.tiny)), backend_config=config)
        startup = time.perf_counter() - start
    runner = pipe.service.engine.runner
    trace = StepTrace()
    trace.install(runner)
    rows = decode_rows(pipe, trace, [1], 128, 128)
    # Rank 0's weights times tp: the other ranks hold the same shapes (padding aside).
    all_weights = step_weight_bytes(pipe) * tp
    floor = tp * bandwidth / all_weights
    report = {
        "model": name + (" (tiny)" if args.tiny else ""),
        "tp": tp,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cuda_graphs": runner.graphs is not None,
        "one_shot_small_all_reduce": parallel_state.has_small_all_reduce(),
        "startup_s": startup,
        "copy_bandwidth_GBps_one_gpu": bandwidth / 1e9,
        "step_weight_bytes_all_ranks": all_weights,
        "floor_batch1_tokens_per_s": floor,
        "batch1": rows[0],
        "batch1_fraction_of_floor": rows[0]["decode_tokens_per_s"] / floor,
        "throughput": throughput(pipe, args.requests),
    }
    # Reported before the close too: a close that hangs (as NCCL's teardown did) keeps the row.
    print(json.dumps(report), flush=True)
    start = time.perf_counter()
    pipe.close()
    report["close_s"] = time.perf_counter() - start
    print(json.dumps(report), flush=True)
    return report


def _allreduce_rank(rank: int, port: int, hidden: int, calls: int, out: str, cuda: bool) -> None:
    """`calls` all-reduces of [1, hidden], as a decode step's: replayed from a CUDA graph on
    the GPU (as the engine runs them), through NCCL and through the one-shot path."""
    import torch
    import torch.distributed as dist

    from lmdeploy.adapters.engines.pytorch.distributed.symmetric_all_reduce import (
        try_symmetric_all_reduce,
    )

    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    x = torch.ones(1, hidden, dtype=torch.bfloat16 if cuda else torch.float32, device=device)
    ways = {"nccl": lambda t: dist.all_reduce(t)}
    one_shot = try_symmetric_all_reduce(device) if cuda else None
    if one_shot is not None:
        ways["one_shot"] = one_shot
    result = {"hidden": hidden, "calls": calls}
    for name, reduce in ways.items():
        step = lambda: [reduce(x) for _ in range(calls)]  # noqa: B023, E731
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            step = graph.replay
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        repeats = 20
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        if cuda:
            torch.cuda.synchronize()
        result[f"{name}_step_s"] = (time.perf_counter() - start) / repeats
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def allreduce_per_step(hidden: int, layers: int, cuda: bool) -> dict[str, Any]:
    """The 2 all-reduces a layer (after o_proj and down_proj) of a batch-1 step, alone."""
    import torch.multiprocessing as mp

    from lmdeploy.adapters.engines.pytorch.distributed.workers import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ar.json")
        args = (free_port(), hidden, 2 * layers, out, cuda)
        mp.spawn(_allreduce_rank, args=args, nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def run_case(name: str, tp: int, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", name, str(tp), "--device", args.device]
    command += ["--requests", str(args.requests)] + ["--tiny"] * args.tiny
    env = os.environ | {"PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
    if variant == "nccl":
        env["LMDEPLOY_SYMM_ALLREDUCE"] = "0"
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        stdout, stderr = proc.communicate(timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        stderr += f"\ncase timed out after {args.case_timeout} s"
    sys.stderr.write(stderr[-6000:])
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"model"')]
    if not rows:
        last = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"model": name, "tp": tp, "variant": variant, "error": last}
    if "close_s" not in rows[-1]:  # measured, then the close failed or hung
        rows[-1]["close_error"] = (stderr.strip().splitlines() or ["?"])[-1]
    return rows[-1] | {"variant": variant}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="shrunken shapes: a smoke run")
    ap.add_argument("--output", default="benchmark/results/gpu_tp.json")
    ap.add_argument("--case-timeout", type=float, default=None, help="seconds a case may run")
    ap.add_argument(
        "--cases", nargs="+", help="e.g. llama-3-8b:1 llama-3-8b:2 llama-3-8b:2:nccl (default: all)"
    )
    ap.add_argument("--one", nargs=2, metavar=("SHAPE", "TP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.one[0], int(args.one[1]), args)
        return
    reports = []
    cases = [
        c for c in CASES if args.cases is None or ":".join(map(str, c)).strip(":") in args.cases
    ]
    for name, tp, variant in cases:  # each kept as it completes: a time limit keeps the earlier
        reports.append(run_case(name, tp, variant, args))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"cases": reports}, indent=2))
        print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
    cuda = args.device == "cuda"
    for r in reports:
        if "error" in r or r["tp"] == 1 or r["variant"]:
            continue
        shape = SHAPE_70B if r["model"].startswith("llama-3-70b") else {"hidden_size": 4096}
        layers = shape.get("num_hidden_layers", 32)
        hidden = 64 if args.tiny else shape["hidden_size"]
        ar = allreduce_per_step(hidden, 2 if args.tiny else layers, cuda)
        step_s = r["batch1"]["step_p50_ms"] / 1e3
        for way in ("nccl", "one_shot"):
            if f"{way}_step_s" in ar:
                ar[f"{way}_fraction_of_step"] = ar[f"{way}_step_s"] / step_s
        r["allreduce_batch1_step"] = ar
    by = {(r["model"], r["tp"]): r for r in reports if "error" not in r and not r["variant"]}
    base, split = by.get((reports[0]["model"], 1)), by.get((reports[0]["model"], 2))
    summary = {}
    if base and split:
        summary["8b_tp2_over_tp1_batch1"] = (
            split["batch1"]["decode_tokens_per_s"] / base["batch1"]["decode_tokens_per_s"]
        )
        summary["8b_tp2_over_tp1_throughput"] = (
            split["throughput"]["output_tokens_per_s"] / base["throughput"]["output_tokens_per_s"]
        )
    result = {"cases": reports, "summary": summary}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
