"""Offline throughput: many requests submitted at once, ours against transformers' static batches.

Input and output lengths come from a fixed-seed ShareGPT-like log-normal (means about 220 and
200 tokens, capped at 2048); outputs run to their drawn length (ignore_eos). transformers runs
the same requests in arrival-order static batches (left padding, each batch until its longest
request); only useful tokens count for either side. `--hf-requests` limits transformers to the
first N requests (its tokens/s is what the ratio uses), to keep device time bounded.

    python benchmark/profile_throughput.py                                  # CPU, default model
    python benchmark/profile_throughput.py --device cuda --load-format dummy --model llama-3-8b
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_trace import StepTrace, breakdown  # noqa: E402
from workloads import random_prompt, sharegpt_like  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline  # noqa: E402


def run_ours(args, requests, vocab):
    config = PytorchEngineConfig(
        load_format=args.load_format,
        max_batch_size=args.max_batch_size,
        session_len=4096 + 2048,
        device_type=args.device,
        dtype=args.dtype,
        cache_max_entry_count=args.cache_max_entry_count,
        eager_mode=args.eager,
        quant_policy=args.quant_policy,
        num_gpu_blocks=args.num_gpu_blocks,
    )
    pipe = pipeline(args.model, backend_config=config)
    try:
        rng = random.Random(1)
        prompts = [random_prompt(n_in, vocab, rng) for n_in, _ in requests]
        configs = [GenerationConfig(max_new_tokens=n_out, ignore_eos=True) for _, n_out in requests]
        pipe(prompts[:4], gen_config=configs[:4])  # warm-up (kernel compilation, graphs)
        runner = pipe.service.engine.runner
        trace = StepTrace()
        trace.install(runner)
        ahead_before = (runner.ahead_counters.started, runner.ahead_counters.used)
        start = time.perf_counter()
        outs = pipe(prompts, gen_config=configs)
        elapsed = time.perf_counter() - start
        stats = pipe.service.engine.stats()
        steps = {
            "steps": len(trace.steps),
            "decode_only_steps": sum(s[4] for s in trace.steps),
            "ahead_started": runner.ahead_counters.started - ahead_before[0],
            "ahead_used": runner.ahead_counters.used - ahead_before[1],
        }
        where = breakdown(trace, start, start + elapsed)
        print("steps:", json.dumps(steps))
    finally:
        pipe.close()
        del pipe  # free the weights and the KV cache before transformers loads its copy
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    tokens = sum(o.generate_token_len for o in outs)
    return {
        "seconds": elapsed,
        "requests_per_s": len(outs) / elapsed,
        "output_tokens_per_s": tokens / elapsed,
        "output_tokens": tokens,
        "preemptions": stats.num_preemptions,
        "kv_blocks": stats.num_blocks,
        **steps,
        "time": where,
    }, prompts


def hf_model(args):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if args.load_format == "dummy":
        from lmdeploy.adapters.loaders.dummy import SHIPPED_CONFIGS

        text = (
            Path(__file__).resolve().parents[1] / "src" / "configs" / SHIPPED_CONFIGS[args.model]
        ).read_text()
        cfg = LlamaConfig(**json.loads(text))
        torch.set_default_dtype(torch.bfloat16)  # random weights made in bf16 directly
        try:
            with torch.device(args.device):
                model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        return model.eval()
    from lmdeploy.adapters.loaders.model_source import embedded_model_file

    path = embedded_model_file()
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


@torch.inference_mode()
def run_hf(args, requests, prompts):
    model = hf_model(args)
    n = min(args.hf_requests, len(requests))
    tokens, elapsed = 0, 0.0
    for start in range(0, n, args.hf_batch):
        batch = list(range(start, min(n, start + args.hf_batch)))
        longest_in = max(len(prompts[i]) for i in batch)
        ids = torch.zeros(len(batch), longest_in, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, longest_in - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, longest_in - len(prompts[i]) :] = 1
        new = max(requests[i][1] for i in batch)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids.to(args.device),
            attention_mask=mask.to(args.device),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        tokens += sum(requests[i][1] for i in batch)
    return {
        "requests": n,
        "batch": args.hf_batch,
        "seconds": elapsed,
        "output_tokens_per_s": tokens / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--cache-max-entry-count", type=float, default=0.8)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--quant-policy", type=int, default=0, choices=[0, 4, 8], help="KV bits")
    parser.add_argument("--num-gpu-blocks", type=int, default=0, help="0: size from free memory")
    parser.add_argument("--hf-requests", type=int, default=128)
    parser.add_argument("--hf-batch", type=int, default=64)
    parser.add_argument("--mean-in", type=float, default=220)
    parser.add_argument("--mean-out", type=float, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    requests = sharegpt_like(args.num_requests, args.seed, args.mean_in, args.mean_out)
    vocab = 128256 if args.load_format == "dummy" else 49152
    ours, prompts = run_ours(args, requests, vocab)
    theirs = run_hf(args, requests, prompts) if args.hf_requests > 0 else None
    report = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "mean_input": sum(r[0] for r in requests) / len(requests),
        "mean_output": sum(r[1] for r in requests) / len(requests),
        "ours": ours,
        "transformers": theirs,
    }
    if theirs:
        report["ratio_output_tokens_per_s"] = (
            ours["output_tokens_per_s"] / theirs["output_tokens_per_s"]
        )
    print(
        f"{args.num_requests} requests (mean in {report['mean_input']:.0f}, out {report['mean_output']:.0f}) "
        f"on {report['device']}"
    )
    print(
        f"ours:         {ours['requests_per_s']:8.2f} req/s  {ours['output_tokens_per_s']:10.1f} output tok/s"
    )
    if theirs:
        print(
            f"transformers: {theirs['output_tokens_per_s']:10.1f} output tok/s over its first {theirs['requests']} "
            f"requests, static batches of {theirs['batch']}"
        )
        print(f"ratio (ours / transformers): {report['ratio_output_tokens_per_s']:.2f}x")
    out = Path(args.output or f"benchmark/results/profile_throughput_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
