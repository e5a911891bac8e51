"""Multi-LoRA decode speed on a GPU: Llama-3-8B shape (dummy weights), random rank-16 PEFT
adapters on all seven linears of every layer.

1. `speed`: one engine with 8 adapters resident; a batch of 64 requests of the base model,
   then a batch of 64 spread over the 8 adapters (8 each), same prompts and lengths. Reports
   decode tokens/s of each and their ratio (the issue asks >= 0.75).
2. `pool`: an engine with 4 device slots and 16 adapters; 64 requests over the 16 adapters
   (4 each) all complete with every token (back-pressure and swap-ins, no error). Reports
   decode tokens/s and the pool's swap-ins.

The adapters are written in PEFT's format (adapter_config.json + adapter_model.safetensors)
under --work-dir; peft itself is not needed.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from step_trace import StepTrace, percentile

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.loaders.dummy import shipped_config

TARGETS = {  # target linear -> the module holding it in a Llama layer
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def _sizes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each target linear."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def write_adapter(directory: Path, cfg: dict, rank: int, seed: int) -> None:
    """A random LoRA adapter in PEFT's files (small A and B, so outputs stay finite)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, (in_size, out_size) in _sizes(cfg).items():
            prefix = f"base_model.model.model.layers.{layer}.{TARGETS[name]}.{name}"
            a = torch.randn(rank, in_size, generator=gen) * in_size**-0.5
            b = torch.randn(out_size, rank, generator=gen) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS),
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))


def run_batch(pipe, trace: StepTrace, prompts, names, output_len: int) -> dict:
    """Submit every request at once (one per prompt, with its adapter); decode speed."""
    service = pipe.service
    gen = GenerationConfig(max_new_tokens=output_len, ignore_eos=True)
    trace.clear()
    start = time.perf_counter()
    streams = [
        service.submit(service.prepare(p, gen, adapter_name=n))
        for p, n in zip(prompts, names, strict=True)
    ]
    outs = [[t for out in stream for t in out.token_ids] for stream in streams]
    total = time.perf_counter() - start
    decode = trace.decode_latencies()
    decode_tokens = sum(s[2] for s in trace.steps if s[4])
    complete = all(len(o) == output_len for o in outs)
    return {
        "requests": len(prompts),
        "adapters": len(set(names) - {None}),
        "all_complete": complete,
        "total_s": total,
        "decode_tokens_per_s": decode_tokens / sum(decode),
        "step_p50_ms": percentile(decode, 0.5) * 1e3,
        "decode_steps": len(decode),
    }


def _engine(model: str, adapters: dict[str, str], max_loras: int, eager: bool):
    config = PytorchEngineConfig(
        load_format="dummy",
        max_batch_size=64,
        session_len=2048,
        cache_max_entry_count=0.5,
        adapters=adapters,
        max_loras=max_loras,
        eager_mode=eager,
    )
    pipe = pipeline(model, backend_config=config)
    trace = StepTrace()
    trace.install(pipe.service.engine.runner)
    return pipe, trace


def _close(pipe) -> None:
    pipe.close()
    gc.collect()
    torch.cuda.empty_cache()


def main(args) -> None:
    cfg = shipped_config(args.model_config)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lora-bench-"))
    paths = {}
    for i in range(16):
        paths[f"lora{i}"] = work / f"lora{i}"
        if not (paths[f"lora{i}"] / "adapter_model.safetensors").exists():
            write_adapter(paths[f"lora{i}"], cfg, args.rank, seed=i)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 30000) for _ in range(args.input_len)] for _ in range(64)]
    report: dict = {"device": torch.cuda.get_device_name(), "model": args.model_config}
    report["rank"], report["eager"] = args.rank, args.eager

    eight = {name: str(paths[name]) for name in list(paths)[:8]}
    pipe, trace = _engine(args.model_config, eight, 8, args.eager)
    report["cuda_graphs"] = pipe.service.engine.runner.graphs is not None
    run_batch(pipe, trace, prompts[:8], [None] * 8, 4)  # warm-up
    run_batch(pipe, trace, prompts[:8], list(eight), 4)
    base = run_batch(pipe, trace, prompts, [None] * 64, args.output_len)
    lora = run_batch(pipe, trace, prompts, [f"lora{i % 8}" for i in range(64)], args.output_len)
    report["speed"] = {"base": base, "lora_8_adapters": lora}
    report["speed"]["lora_over_base"] = lora["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    print(json.dumps(report["speed"]), flush=True)
    _close(pipe)

    pipe, trace = _engine(args.model_config, {n: str(p) for n, p in paths.items()}, 4, args.eager)
    pool = run_batch(pipe, trace, prompts, [f"lora{i % 16}" for i in range(64)], args.output_len)
    pool["swap_ins"] = pipe.service.engine.runner.lora.swap_ins
    report["pool_4_slots_16_adapters"] = pool
    print(json.dumps(pool), flush=True)
    _close(pipe)

    out = Path(args.output or "benchmark/results/gpu_lora.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    ratio = report["speed"]["lora_over_base"]
    print(f"LoRA (8 adapters, batch 64) / base decode tok/s: {ratio:.2f} (target >= 0.75)")
    print(
        f"pool 4 slots / 16 adapters: all complete {pool['all_complete']}, {pool['swap_ins']} swap-ins"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", default="llama-3-8b")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--work-dir", default=None, help="where the adapters are written")
    parser.add_argument("--output", default=None)
    main(parser.parse_args())
