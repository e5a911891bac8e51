"""Decode speed of each model family at its real shape (dummy weights, bf16, CUDA graphs).

    python benchmark/gpu_families.py [SHAPE ...] [--batch-sizes 1 16 64 256]
                                     [--input-len 128] [--output-len 128] [--output FILE]
    python benchmark/gpu_families.py --device cpu --tiny llama-3-8b    # a smoke run, no GPU

SHAPE is a shipped config (src/configs/; default: every family's). For each, in its own
process (a shape's memory is gone before the next loads): B requests of `--input-len` random
tokens generate `--output-len` tokens each, for every batch size B, timed per step as
gpu_generation.py does. The batch-1 floor is the device copy bandwidth measured in the same
run over the bytes one decode step must read: every weight but an untied input embedding table
(one row of it a token) for a dense model; for a mixture of experts the weights outside the
experts plus, in each MoE layer, the `num_experts_per_tok` experts one token is routed to.

`--tiny` shrinks each shape (2 layers, hidden 64, at most 4 experts) and writes it with the
default model's tokenizer to a temporary directory: the same code path, seconds on a CPU.
A shape whose family this build cannot run is reported with its error; the others still run.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES = ["llama-3-8b", "qwen2.5-7b", "mistral-7b", "qwen3-30b-a3b", "mixtral-8x7b"]
SESSION_LEN = 4096


# -- the bytes one batch-1 decode step reads ------------------------------------------------------
def moe_shape(cfg: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(MoE layers, experts, experts per token, expert intermediate size); None when dense."""
    experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    if not experts:
        return None
    step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or ())
    layers = sum(
        1 for i in range(cfg["num_hidden_layers"]) if i not in dense and (i + 1) % max(step, 1) == 0
    )
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    return layers, experts, cfg["num_experts_per_tok"], inter


def decode_step_bytes(cfg: dict[str, Any], weight_bytes: int, dtype_bytes: int) -> int:
    """The weights a step reads (`step_weight_bytes`), less the experts a batch-1 token is not
    routed to (gate, up, down each)."""
    moe = moe_shape(cfg)
    if moe is None:
        return weight_bytes
    layers, experts, top_k, inter = moe
    expert_bytes = 3 * cfg["hidden_size"] * inter * dtype_bytes
    return weight_bytes - layers * (experts - min(top_k, experts)) * expert_bytes


# -- tiny shapes for a CPU smoke run --------------------------------------------------------------
def tiny_config(cfg: dict[str, Any]) -> dict[str, Any]:
    tiny = dict(cfg) | {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 49152,  # the default model's tokenizer, saved beside it
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    if moe_shape(cfg):
        key = "num_experts" if "num_experts" in cfg else "num_local_experts"
        experts = min(cfg[key], 4)
        tiny |= {key: experts, "num_experts_per_tok": min(cfg["num_experts_per_tok"], 2)}
        tiny |= {"moe_intermediate_size": 32} if "moe_intermediate_size" in cfg else {}
    if cfg.get("sliding_window") and cfg.get("use_sliding_window", True):
        tiny["sliding_window"] = SESSION_LEN
    return tiny


def write_tiny(name: str, directory: Path) -> Path:
    from lmdeploy.adapters.loaders import dummy
    from lmdeploy.adapters.loaders.model_source import embedded_model_file
    from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

    (directory / "config.json").write_text(json.dumps(tiny_config(dummy.shipped_config(name))))
    _gguf_tokenizer(embedded_model_file()).save_pretrained(directory)
    return directory


# -- one shape (in its own process) ---------------------------------------------------------------
def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from gpu_generation import copy_bandwidth, decode_rows, step_weight_bytes, weight_bytes
    from step_trace import StepTrace

    from lmdeploy import PytorchEngineConfig, pipeline

    cuda = args.device == "cuda"
    bandwidth = copy_bandwidth(device=args.device, num_bytes=(2 << 30) if cuda else (64 << 20))
    config = PytorchEngineConfig(
        device_type=args.device,
        load_format="dummy",
        dtype="bfloat16" if cuda else "float32",
        max_batch_size=max(args.batch_sizes),
        session_len=SESSION_LEN,
        eager_mode=args.eager,
        cache_max_entry_count=0.8 if cuda else 0.1,
        prefill_interval=args.prefill_interval,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_tiny(name, Path(tmp))) if args.tiny else name
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipe = pipeline(model, backend_config=config, log_level=args.log_level)
        startup = time.perf_counter() - start
    runner = pipe.service.engine.runner
    trace = StepTrace()
    trace.install(runner)
    rows = decode_rows(pipe, trace, args.batch_sizes, args.input_len, args.output_len)
    raw = _raw_config(name, args.tiny)
    wbytes = weight_bytes(pipe)
    step_bytes = decode_step_bytes(
        raw, step_weight_bytes(pipe), torch.finfo(runner.dtype).bits // 8
    )
    report = {
        "model": name + (" (tiny)" if args.tiny else ""),
        "architecture": runner.model.config.architectures[0],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(runner.dtype),
        "cuda_graphs": runner.graphs is not None,
        # The one-row RMSNorms run inside the GEMVs around them (layers/norm.py's link_norms).
        "norms_linked": sum(bool(getattr(m, "linked", False)) for m in runner.model.modules()),
        "residual_adds_deferred": sum(
            bool(getattr(m, "feeds_residual_add", False)) for m in runner.model.modules()
        ),
        "startup_s": startup,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "weight_bytes": wbytes,
        "decode_step_bytes": step_bytes,
        "floor_batch1_tokens_per_s": bandwidth / step_bytes,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "rows": rows,
    }
    batch1 = next((r for r in rows if r["batch"] == 1), None)
    report["batch1_fraction_of_floor"] = (
        batch1["decode_tokens_per_s"] / report["floor_batch1_tokens_per_s"] if batch1 else None
    )
    pipe.close()
    del pipe, runner
    gc.collect()
    return report


def _raw_config(name: str, tiny: bool) -> dict[str, Any]:
    from lmdeploy.adapters.loaders import dummy

    cfg = dummy.shipped_config(name)
    return tiny_config(cfg) if tiny else cfg


def run_shape(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a fresh process; its error, if it fails, in place of its numbers."""
    command = [sys.executable, __file__, "--one", name, "--device", args.device]
    command += ["--batch-sizes", *map(str, args.batch_sizes)]
    command += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    command += ["--tiny"] * args.tiny + ["--eager"] * args.eager
    command += ["--prefill-interval", str(args.prefill_interval)]
    command += ["--log-level", args.log_level]
    proc = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"model": name, "error": last}
    return json.loads(lines[-1])


# -- report ---------------------------------------------------------------------------------------
def table(reports: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    head = f"{'model':<22} {'GB/step':>8} {'floor tok/s':>11} " + " ".join(
        f"{f'b{b} tok/s':>11}" for b in batch_sizes
    )
    lines = [head, "-" * len(head) + f"  {'b1/floor':>8}"]
    for r in reports:
        if "error" in r:
            lines.append(f"{r['model']:<22} failed: {r['error']}")
            continue
        speeds = {row["batch"]: row["decode_tokens_per_s"] for row in r["rows"]}
        lines.append(
            f"{r['model']:<22} {r['decode_step_bytes'] / 1e9:>8.2f} "
            f"{r['floor_batch1_tokens_per_s']:>11.1f} "
            + " ".join(f"{speeds.get(b, float('nan')):>11.1f}" for b in batch_sizes)
            + f"  {100 * (r['batch1_fraction_of_floor'] or float('nan')):>7.1f}%"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=SHAPES, help=f"default: {' '.join(SHAPES)}")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="shrunken shapes: a smoke run")
    ap.add_argument("--log-level", default="WARNING", help="the engine's (INFO: load-time choices)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument(
        "--prefill-interval", type=int, default=16, help="0: admit new prompts at once (A/B)"
    )
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/gpu_families.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.one:
        print(json.dumps(measure(args.one, args)), flush=True)
        return
    reports = []
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for name in args.shapes:  # each kept as it completes: a time limit keeps the earlier ones
        reports.append(run_shape(name, args))
        print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
        args.output.write_text(
            json.dumps(
                {"args": vars(args) | {"output": str(args.output)}, "reports": reports},
                indent=2,
                default=str,
            )
        )
    print(f"decode tok/s, input {args.input_len}, output {args.output_len}, on {args.device}")
    print(table(reports, args.batch_sizes))


if __name__ == "__main__":
    main()
