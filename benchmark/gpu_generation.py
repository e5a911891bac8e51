"""Decode speed on a GPU with a real-size model (dummy weights): batch 1/16/64/256.

For each batch size B: B requests of `--input-len` random tokens generate `--output-len`
tokens each (ignore_eos), all submitted together. Every forward pass is timed (the step ends
with its one host sync), which gives first-token latency (the prefill steps), per-token
latency (decode steps, p50/p99) and decode tokens/s. The copy bandwidth is measured in the
same run; weight bytes over it is the floor of a batch-1 decode step.
"""

from __future__ import annotations

import gc
import json
import random
import time
from pathlib import Path

import torch
from step_trace import StepTrace, percentile

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline


def copy_bandwidth(num_bytes: int = 2 << 30, repeats: int = 20, device: str = "cuda") -> float:
    """Device-to-device copy rate in bytes/s (read + write counted)."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        dst.copy_(src)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync()
    elapsed = time.perf_counter() - start
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
    return 2 * num_bytes * repeats / elapsed


def weight_bytes(pipe) -> int:
    model = pipe.service.engine.runner.model
    return sum(p.numel() * p.element_size() for p in model.parameters())


def step_weight_bytes(pipe) -> int:
    """The weight bytes one decode step reads: every parameter but an untied input embedding
    table, of which a step reads one row a token (a table tied to the LM head is read whole, as
    the head)."""
    from lmdeploy.adapters.engines.pytorch.layers.embedding import VocabEmbedding

    model = pipe.service.engine.runner.model
    tables = (
        []
        if model.config.tie_word_embeddings
        else [m.weight for m in model.modules() if isinstance(m, VocabEmbedding)]
    )
    return weight_bytes(pipe) - sum(p.numel() * p.element_size() for p in tables)


def decode_rows(
    pipe, trace: StepTrace, batch_sizes: list[int], input_len: int, output_len: int
) -> list[dict]:
    """For each batch size B, B requests of `input_len` random tokens generating `output_len`
    each, submitted together: latency and decode speed from the traced steps."""
    rng = random.Random(0)
    vocab = pipe.service.engine.runner.model.config.vocab_size
    rows = []
    gen = GenerationConfig(max_new_tokens=output_len, ignore_eos=True)
    pipe(
        [[rng.randrange(100, vocab) for _ in range(16)]],
        gen_config=GenerationConfig(max_new_tokens=4),
    )
    for batch in batch_sizes:
        prompts = [[rng.randrange(100, vocab) for _ in range(input_len)] for _ in range(batch)]
        trace.clear()
        start = time.perf_counter()
        outs = pipe(prompts, gen_config=gen)
        total = time.perf_counter() - start
        steps = trace.steps
        first_decode = next(i for i, s in enumerate(steps) if s[4])
        ttft = steps[first_decode - 1][1] - start
        decode = trace.decode_latencies()
        decode_tokens = sum(s[2] for s in steps if s[4])
        rows.append(
            {
                "batch": batch,
                "input_len": input_len,
                "output_len": output_len,
                "total_s": total,
                "ttft_s": ttft,
                "decode_tokens_per_s": decode_tokens / sum(decode),
                "output_tokens_per_s": sum(o.generate_token_len for o in outs) / total,
                "step_p50_ms": percentile(decode, 0.5) * 1e3,
                "step_p99_ms": percentile(decode, 0.99) * 1e3,
                "decode_steps": len(decode),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args) -> dict:
    bandwidth = copy_bandwidth()
    config = PytorchEngineConfig(
        load_format="dummy",
        max_batch_size=max(args.batch_sizes),
        session_len=4096,
        eager_mode=args.eager,
        cache_max_entry_count=0.8,
    )
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe = pipeline(args.model_config, backend_config=config)
    startup = time.perf_counter() - t0
    runner = pipe.service.engine.runner
    trace = StepTrace()
    trace.install(runner)
    rows = decode_rows(pipe, trace, args.batch_sizes, args.input_len, args.output_len)
    wbytes, step_bytes = weight_bytes(pipe), step_weight_bytes(pipe)
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "model": args.model_config,
        "dtype": str(runner.dtype),
        "cuda_graphs": runner.graphs is not None,
        "decodes_ahead": runner.decodes_ahead,
        "ahead_started": runner.ahead_counters.started,
        "ahead_used": runner.ahead_counters.used,
        "startup_s": startup,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "weight_bytes": wbytes,
        "decode_step_bytes": step_bytes,
        "floor_batch1_tokens_per_s": bandwidth / step_bytes,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "kv_blocks": runner.cache.num_blocks,
        "rows": rows,
    }
    report["batch1_fraction_of_floor"] = (
        rows[0]["decode_tokens_per_s"] / report["floor_batch1_tokens_per_s"]
        if rows[0]["batch"] == 1
        else None
    )
    pipe.close()
    del pipe, runner
    gc.collect()
    torch.cuda.empty_cache()
    return report


def print_table(report: dict) -> None:
    print(
        f"{report['model']} {report['dtype']} on {report['device']}, CUDA graphs {report['cuda_graphs']}"
    )
    print(
        f"copy bandwidth {report['copy_bandwidth_GBps']:.0f} GB/s, weights {report['weight_bytes'] / 1e9:.2f} GB, "
        f"batch-1 floor {report['floor_batch1_tokens_per_s']:.1f} tok/s, peak memory {report['peak_memory_GiB']:.1f} GiB"
    )
    print(
        f"{'batch':>6} {'decode tok/s':>13} {'TTFT ms':>9} {'step p50 ms':>12} {'step p99 ms':>12}"
    )
    for r in report["rows"]:
        print(
            f"{r['batch']:>6} {r['decode_tokens_per_s']:>13.1f} {r['ttft_s'] * 1e3:>9.1f} "
            f"{r['step_p50_ms']:>12.2f} {r['step_p99_ms']:>12.2f}"
        )
    if report.get("batch1_fraction_of_floor"):
        print(f"batch 1: {100 * report['batch1_fraction_of_floor']:.1f}% of the bandwidth floor")


def main(args) -> None:
    report = run(args)
    print_table(report)
    out = Path(args.output or "benchmark/results/profile_generation_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="llama-3-8b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--output", default=None)
    main(parser.parse_args())
