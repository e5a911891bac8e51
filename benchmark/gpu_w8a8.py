"""W8A8 (int8 SmoothQuant, FP8 e4m3) against bf16 on a GPU, Llama-3-8B shape, random weights.

Two parts, every row measured beside bf16 in the same run:
- GEMM micro-bench: the 8B model's four linear shapes at M = 1..4096 rows, bf16 `torch.mm`
  against per-token quantisation + the int8 Triton GEMM, and + `torch._scaled_mm` for FP8
  (TFLOP/s, and the 8-bit GEMM alone without the activation quantisation).
- The engine: a config.json of the shape with `quantization_config` (none for bf16) loaded
  with random weights (`load_format='dummy'`); prefill throughput on 1k-token prompts
  (one output token each) and batch-256 decode tokens/s (`gpu_generation.decode_rows`).
The issue's bar: prefill >= 1.4x bf16, batch-256 decode >= 1.2x, for int8 and for FP8.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from gpu_generation import decode_rows
from step_trace import StepTrace
from triton.testing import do_bench

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.loaders.dummy import shipped_config
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.adapters.tokenizers.hf_tokenizer import HFTokenizer
from lmdeploy.kernels.per_token_quant import per_token_quant, per_token_quant_ref
from lmdeploy.kernels.w8a8_gemm import w8a8_gemm

# (name, K, N) of Llama-3-8B's linears: qkv, o, gate_up, down.
SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
FORMATS = {"bf16": None, "int8": "int8", "fp8": "float8_e4m3fn"}


def gemm_rows(rows_m: list[int]) -> list[dict]:
    out = []
    for name, k, n in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        w8, s8 = per_token_quant_ref(w, torch.int8)
        wf8, sf8 = per_token_quant_ref(w, torch.float8_e4m3fn)
        for m in rows_m:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            times = _times(x, w, (w8, s8), (wf8, sf8))
            flops = 2 * m * n * k
            row = {"shape": name, "M": m, "K": k, "N": n}
            row.update({f"{key}_ms": t for key, t in times.items()})
            row.update({f"{key}_TFLOPs": flops / t / 1e9 for key, t in times.items()})
            row.update({f"{key}_speedup": times["bf16"] / t for key, t in times.items()})
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _times(x, w, int8_w, fp8_w) -> dict[str, float]:
    """Milliseconds of each way to compute x @ w^T (the 8-bit weights quantised already)."""
    x8 = per_token_quant(x, torch.int8)
    xf8 = per_token_quant(x, torch.float8_e4m3fn)
    return {
        "bf16": do_bench(lambda: x @ w.t()),
        "int8": do_bench(lambda: w8a8_gemm(*per_token_quant(x), *int8_w, x.dtype)),
        "int8_gemm_only": do_bench(lambda: w8a8_gemm(*x8, *int8_w, x.dtype)),
        "fp8": do_bench(lambda: _fp8(per_token_quant(x, torch.float8_e4m3fn), *fp8_w)),
        "fp8_gemm_only": do_bench(lambda: _fp8(xf8, *fp8_w)),
    }


def _fp8(x_and_scale, w, w_scale) -> torch.Tensor:
    x_q, x_s = x_and_scale
    return torch._scaled_mm(
        x_q, w.t(), scale_a=x_s, scale_b=w_scale.view(1, -1), out_dtype=torch.bfloat16
    )


def model_dir(root: Path, fmt: str) -> Path:
    config = shipped_config("llama-3-8b")
    if FORMATS[fmt] is not None:
        config["quantization_config"] = {
            "quant_method": "smooth_quant",
            "quant_dtype": FORMATS[fmt],
        }
    directory = root / fmt
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    # A directory needs a tokenizer: the embedded model's (prompts are ids below its vocab).
    HFTokenizer.from_source(resolve(None)).hf_tokenizer.save_pretrained(str(directory))
    return directory


def prefill_row(pipe, trace: StepTrace, num_prompts: int, input_len: int) -> dict:
    rng = random.Random(1)
    prompts = [[rng.randrange(100, 100000) for _ in range(input_len)] for _ in range(num_prompts)]
    trace.clear()
    start = time.perf_counter()
    pipe(prompts, gen_config=GenerationConfig(max_new_tokens=1, ignore_eos=True))
    total = time.perf_counter() - start
    prefill = [s for s in trace.steps if not s[4]]
    busy = sum(end - begin for begin, end, *_ in prefill)
    tokens = sum(s[3] for s in prefill)
    return {
        "prompts": num_prompts,
        "input_len": input_len,
        "total_s": total,
        "prefill_tokens_per_s": tokens / busy,
    }


def engine_rows(fmt: str, root: Path, args) -> dict:
    config = PytorchEngineConfig(
        load_format="dummy",
        max_batch_size=256,
        session_len=4096,
        cache_max_entry_count=0.8,
        max_prefill_token_num=args.prefill_chunk,
    )
    pipe = pipeline(str(model_dir(root, fmt)), backend_config=config)
    trace = StepTrace()
    trace.install(pipe.service.engine.runner)
    pipe([[100] * 16], gen_config=GenerationConfig(max_new_tokens=4))  # warm-up, autotune
    report = {
        "format": fmt,
        "prefill": prefill_row(pipe, trace, args.prefill_prompts, args.prefill_len),
        "decode": decode_rows(pipe, trace, [args.decode_batch], args.input_len, args.output_len),
    }
    print(json.dumps(report), flush=True)
    pipe.close()
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return report


def main(args) -> None:
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.skip_gemm:
        report["gemm"] = gemm_rows(args.gemm_rows)
    with tempfile.TemporaryDirectory() as tmp:
        engines = [engine_rows(fmt, Path(tmp), args) for fmt in args.formats]
    report["engine"] = engines
    base = engines[0]
    for row in engines:
        row["prefill_speedup"] = (
            row["prefill"]["prefill_tokens_per_s"] / base["prefill"]["prefill_tokens_per_s"]
        )
        row["decode_speedup"] = (
            row["decode"][0]["decode_tokens_per_s"] / base["decode"][0]["decode_tokens_per_s"]
        )
        print(
            f"{row['format']:>5}: prefill x{row['prefill_speedup']:.2f}, "
            f"batch-{args.decode_batch} decode x{row['decode_speedup']:.2f} vs {base['format']}"
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--gemm-rows", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096])
    parser.add_argument("--skip-gemm", action="store_true")
    parser.add_argument("--prefill-prompts", type=int, default=64)
    parser.add_argument("--prefill-len", type=int, default=1024)
    parser.add_argument("--prefill-chunk", type=int, default=8192)
    parser.add_argument("--decode-batch", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--output", default="benchmark/results/gpu_w8a8.json")
    main(parser.parse_args())
