"""Issue 15's six serving rows in one process, each against its counted limit.

One engine (Llama-3-8B shape, bf16, random weights, CUDA graphs) runs, through `pipeline()`:

| row | workload | counted limit |
|---|---|---|
| prefill | 512 prompts x 1024 tokens, 1 output token | FLOPs / the bf16 GEMM rate measured here |
| decode 256 | 256 sequences, 32 in / 512 out | per step max(bytes / copy bandwidth, FLOPs / GEMM rate) |
| decode 512 | 512 sequences, 32 in / 512 out | same |
| uniform | 1000 requests, 200 in / 200 out | an ideal continuous batcher, simulated (see `serving_s`) |
| log-normal | 1000 requests, means 220 / 200, sigma 0.9, cap 2048 | same |
| batch 1 | 1 sequence, 128 in / 256 out | weight bytes / copy bandwidth |

Bytes of a decode step: the weights once (all but the input embedding table, of which a step
reads a row a token) plus every sequence's K/V context; FLOPs: 2 x those parameters a token
(the LM head included) plus attention's 4 x context x hidden per layer. The
limits ignore everything else (sampling, small kernels, host time), so they are bounds, not
predictions. TTFT p50/p99 of the log-normal row come from `stream_infer` (the first response of
each request, all submitted at once); each row also records the SM clock, temperature and
power as it ends (NVML, where present). Prints a table; writes JSON to --output.

    python benchmark/gpu_serving_rows.py --max-batch-size 512
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_generation import copy_bandwidth, step_weight_bytes  # noqa: E402
from step_trace import StepTrace, breakdown  # noqa: E402
from workloads import random_prompt, sharegpt_like  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline  # noqa: E402


def gemm_tflops(device: str = "cuda") -> float:
    """bf16 GEMM rate at a prefill-like shape (8192 x 4096 x 14336), TFLOP/s."""
    a = torch.randn(8192, 4096, device=device, dtype=torch.bfloat16)
    b = torch.randn(4096, 14336, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 * 4096 * 14336 * 20 / (time.perf_counter() - start) / 1e12


def gpu_state() -> dict[str, float]:
    """The SM clock (MHz), temperature (C) and power (W) as a row ends, where NVML answers: a
    row that follows a long compute-bound one may run at lower clocks (a thermal or power cap)."""
    state = {}
    for key, read in (
        ("sm_clock_mhz", torch.cuda.clock_rate),
        ("temperature_c", torch.cuda.temperature),
        ("power_w", lambda: torch.cuda.power_draw() / 1000),
    ):
        try:
            state[key] = read()
        except Exception:  # noqa: BLE001 - no NVML (pynvml) on this machine: nothing to add
            pass
    return state


class Limits:
    """Counted step costs of the model on this GPU."""

    def __init__(self, cfg, weights: int, bandwidth: float, tflops: float) -> None:
        self.weights, self.bandwidth, self.flops = weights, bandwidth, tflops * 1e12
        self.params = weights / 2  # bf16
        self.layers, self.hidden = cfg.num_hidden_layers, cfg.hidden_size
        self.kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2

    def flops_per_token(self, context: float) -> float:
        return 2 * self.params + 4 * context * self.hidden * self.layers

    def decode_step_s(self, batch: int, context: float) -> float:
        bytes_ = self.weights + batch * context * self.kv_per_token
        return max(bytes_ / self.bandwidth, batch * self.flops_per_token(context) / self.flops)

    def prefill_s(self, tokens: int, context: float) -> float:
        return tokens * self.flops_per_token(context / 2) / self.flops

    def serving_s(self, requests: list[tuple[int, int]], max_batch: int) -> float:
        """An ideal continuous batcher, simulated step by step: every request waiting at the
        start, the longest outputs admitted first (what minimizes the tail), a freed slot
        refilled at once at the cost of its prompt's prefill, each step costing
        `decode_step_s` of its batch at its mean context. Nothing else costs time."""
        waiting = sorted(requests, key=lambda r: -r[1])
        running: list[list[int]] = []  # [context, tokens left]
        total = 0.0
        while waiting or running:
            while waiting and len(running) < max_batch:
                prompt, out = waiting.pop(0)
                total += self.prefill_s(prompt, prompt)
                running.append([prompt, out])
            ctx = statistics.mean(c for c, _ in running)
            total += self.decode_step_s(len(running), ctx)
            for r in running:
                r[0] += 1
                r[1] -= 1
            running = [r for r in running if r[1] > 0]
        return total


def _prompts(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [random_prompt(n, vocab, rng) for n in lengths]


def _run(pipe, requests: list[tuple[int, int]], vocab: int, seed: int) -> tuple[float, int]:
    prompts = _prompts([i for i, _ in requests], vocab, seed)
    configs = [GenerationConfig(max_new_tokens=o, ignore_eos=True) for _, o in requests]
    start = time.perf_counter()
    outs = pipe(prompts, gen_config=configs)
    return time.perf_counter() - start, sum(o.generate_token_len for o in outs)


def _run_streaming(pipe, requests, vocab: int, seed: int) -> tuple[float, int, list[float]]:
    prompts = _prompts([i for i, _ in requests], vocab, seed)
    configs = [GenerationConfig(max_new_tokens=o, ignore_eos=True) for _, o in requests]
    first: dict[int, float] = {}
    tokens: dict[int, int] = {}
    start = time.perf_counter()
    for out in pipe.stream_infer(prompts, gen_config=configs):
        if out.generate_token_len and out.index not in first:
            first[out.index] = time.perf_counter() - start
        tokens[out.index] = max(tokens.get(out.index, 0), out.generate_token_len)
    return time.perf_counter() - start, sum(tokens.values()), sorted(first.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--max-batch-size", type=int, default=512)
    ap.add_argument("--cache-max-entry-count", type=float, default=0.8)
    ap.add_argument(
        "--prefill-interval", type=int, default=16, help="0: admit new prompts at once (A/B)"
    )
    ap.add_argument(
        "--rows",
        nargs="+",
        choices=["prefill", "d256", "d512", "uniform", "lognormal", "b1"],
        default=["prefill", "d256", "d512", "uniform", "lognormal", "b1"],
        help="rows to run, in this order (a row named twice runs twice)",
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="record every forward pass; each row gets where its wall time went (steps by kind)",
    )
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/serving_rows_cuda.json"))
    args = ap.parse_args()
    bandwidth, tflops = copy_bandwidth(), gemm_tflops()
    config = PytorchEngineConfig(
        load_format="dummy",
        max_batch_size=args.max_batch_size,
        session_len=4096,
        cache_max_entry_count=args.cache_max_entry_count,
        prefill_interval=args.prefill_interval,
    )
    pipe = pipeline(args.model, backend_config=config)
    model = pipe.service.engine.runner.model
    vocab = model.config.vocab_size
    limits = Limits(model.config, step_weight_bytes(pipe), bandwidth, tflops)
    _run(pipe, [(64, 8)] * 8, vocab, seed=0)  # warm-up: kernels compiled, graphs captured
    trace = StepTrace()
    if args.trace:
        trace.install(pipe.service.engine.runner)
    rows = []

    def row(name: str, unit: str, ours: float, limit: float, **extra) -> None:
        extra |= gpu_state()
        rows.append({"row": name, "unit": unit, "ours": ours, "limit": limit, **extra})
        print(json.dumps(rows[-1]), flush=True)

    def prefill() -> None:
        elapsed, _ = _run(pipe, [(1024, 1)] * 512, vocab, seed=1)
        row(
            "prefill 512 x 1024",
            "prompt tok/s",
            512 * 1024 / elapsed,
            1 / limits.prefill_s(1, 1024),
        )

    def decode(batch: int) -> None:
        if batch > args.max_batch_size:
            return
        elapsed, out = _run(pipe, [(32, 512)] * batch, vocab, seed=batch)
        limit = batch / limits.decode_step_s(batch, 32 + 256)
        row(f"decode {batch}, 32/512", "output tok/s", out / elapsed, limit)

    def uniform() -> None:
        reqs = [(200, 200)] * 1000
        elapsed, out = _run(pipe, reqs, vocab, seed=3)
        limit = sum(o for _, o in reqs) / limits.serving_s(reqs, args.max_batch_size)
        row("1000 uniform 200/200", "output tok/s", out / elapsed, limit, seconds=elapsed)

    def lognormal() -> None:
        reqs = sharegpt_like(1000, seed=0, mean_in=220, mean_out=200)
        elapsed, out, ttft = _run_streaming(pipe, reqs, vocab, seed=4)
        limit = sum(o for _, o in reqs) / limits.serving_s(reqs, args.max_batch_size)
        row(
            "1000 log-normal 220/200",
            "output tok/s",
            out / elapsed,
            limit,
            seconds=elapsed,
            ttft_p50_s=ttft[len(ttft) // 2],
            ttft_p99_s=ttft[int(len(ttft) * 0.99)],
        )

    def batch1() -> None:
        elapsed, out, first = _run_streaming(pipe, [(128, 256)], vocab, seed=5)
        decode_rate = (out - 1) / (elapsed - first[0])  # after the first token: decode only
        row("batch 1 decode, 128/256", "output tok/s", decode_rate, bandwidth / limits.weights)

    runs = {
        "prefill": prefill,
        "d256": lambda: decode(256),
        "d512": lambda: decode(512),
        "uniform": uniform,
        "lognormal": lognormal,
        "b1": batch1,
    }
    for name in args.rows:  # in the order given; a row named twice runs twice
        start, rows_before = time.perf_counter(), len(rows)
        runs[name]()
        if args.trace and len(rows) > rows_before:
            rows[-1]["time"] = breakdown(trace, start, time.perf_counter())
            shown = {k: v for k, v in rows[-1]["time"].items() if not k.startswith("prompt_steps")}
            print(json.dumps(shown, indent=1), flush=True)
            trace.clear()
    pipe.close()
    print(f"\n{'row':<26} {'ours':>10} {'limit':>10} {'of limit':>9}  unit")
    for r in rows:
        print(
            f"{r['row']:<26} {r['ours']:>10.0f} {r['limit']:>10.0f} {r['ours'] / r['limit']:>8.1%}  {r['unit']}"
        )
    report = {
        "device": torch.cuda.get_device_name(),
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "gemm_tflops": tflops,
        "max_batch_size": args.max_batch_size,
        "prefill_interval": args.prefill_interval,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
