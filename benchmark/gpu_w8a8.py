"""W8A8 (int8 SmoothQuant, FP8 e4m3) against bf16 on a GPU, Llama-3-8B shape, random weights.

One run (~6 minutes on an H200), every row measured beside bf16:
- GEMM rows: the 8B model's four linears at M = 1..4096 rows, each with the op that produces
  its input as the engine runs it -- (residual add +) RMSNorm before qkv and gate_up,
  SiLU-and-mul before down, nothing before o (the attention output) -- so that the fused
  producers (`lmdeploy_kernels/rms_norm_quant.py`, `lmdeploy_kernels/silu_and_mul_quant.py`: one launch writes
  8-bit codes and scales) compare with the unfused chain (producer, then `per_token_quant`).
  Columns, in ms and as a speedup over bf16: `bf16` (producer + torch.mm), `int8`/`fp8`
  (producer + quant + GEMM, what o_proj does), `int8_fused`/`fp8_fused` (what the engine runs
  for qkv, gate_up and down), and the GEMMs alone on quantised inputs: our Triton GEMM
  (`int8_gemm`, `fp8_triton_gemm`), `torch._int_mm` with the scales applied in torch
  (`int8_torch_int_mm`; None where torch refuses the shape), `torch._scaled_mm` (`fp8_gemm`,
  the engine's FP8 path). Each time is a CUDA-graph replay, as the engine's decode steps run
  (an eager loop at decode sizes times the CPU's launches), cycling through copies of the
  weight that span 4x the L2, as a model's 32 layers do.
- The engine: a bare directory holding only config.json (with `quantization_config`, none for
  bf16), random weights (`load_format='dummy'`), prompts as token ids (no tokenizer needed);
  prefill throughput on 1k-token prompts (one output token each) and batch-256 decode
  tokens/s (`gpu_generation.decode_rows`), and their ratios to bf16.
The issue's bar: prefill >= 1.4x bf16, batch-256 decode >= 1.2x, for int8 and for FP8.

    python3 benchmark/gpu_w8a8.py --output benchmark/results/gpu_w8a8_h200.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from gpu_generation import decode_rows
from step_trace import StepTrace

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.loaders.dummy import shipped_config
from lmdeploy.kernels.per_token_quant import per_token_quant, per_token_quant_ref
from lmdeploy.kernels.rms_norm import fused_add_rms_norm
from lmdeploy.kernels.rms_norm_quant import rms_norm_quant
from lmdeploy.kernels.silu_and_mul import silu_and_mul
from lmdeploy.kernels.silu_and_mul_quant import silu_and_mul_quant
from lmdeploy.kernels.w8a8_gemm import w8a8_gemm

# (name, K, N, the op producing the linear's input) of Llama-3-8B's linears.
SHAPES = [
    ("qkv", 4096, 6144, "rms_norm"),
    ("o", 4096, 4096, None),
    ("gate_up", 4096, 28672, "rms_norm"),
    ("down", 14336, 4096, "silu_and_mul"),
]
FORMATS = {"bf16": None, "int8": "int8", "fp8": "float8_e4m3fn"}
INT8, FP8 = torch.int8, torch.float8_e4m3fn
# The H200's L2 (50 MiB): the weight copies a row cycles through span four times it.
L2_BYTES = 50 << 20


def gemm_rows(rows_m: list[int]) -> list[dict]:
    out = []
    for name, k, n, producer in SHAPES:
        copies = max(2, math.ceil(4 * L2_BYTES / (n * k * 2)))
        weights = [_weights(n, k) for _ in range(copies)]
        for m in rows_m:
            times = _times(Producer(producer, m, k), weights)
            row = {"shape": name, "M": m, "K": k, "N": n}
            row.update({f"{key}_ms": t for key, t in times.items()})
            row.update({f"{key}_speedup": times["bf16"] / t for key, t in times.items() if t})
            print(_gemm_line(row), flush=True)
            out.append(row)
        del weights
        torch.cuda.empty_cache()
    return out


def _weights(n: int, k: int) -> dict:
    """One copy of a linear's weight in each format (the 8-bit ones quantised per channel)."""
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    return {"bf16": w, INT8: per_token_quant_ref(w, INT8), FP8: per_token_quant_ref(w, FP8)}


class Producer:
    """The input of one linear made as the engine makes it, plain or fused with the quant."""

    def __init__(self, kind: str | None, m: int, k: int) -> None:
        self.kind = kind
        width = 2 * k if kind == "silu_and_mul" else k
        self.x = torch.randn(m, width, device="cuda", dtype=torch.bfloat16)
        self.residual = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        self.norm_weight = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5

    def plain(self) -> torch.Tensor:
        if self.kind == "rms_norm":
            return fused_add_rms_norm(self.x, self.residual, self.norm_weight, 1e-5)[0]
        if self.kind == "silu_and_mul":
            return silu_and_mul(self.x)
        return self.x

    def quantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "rms_norm":
            q, s, _ = rms_norm_quant(self.x, self.norm_weight, 1e-5, dtype, self.residual)
            return q, s
        if self.kind == "silu_and_mul":
            return silu_and_mul_quant(self.x, dtype)
        return per_token_quant(self.x, dtype)  # o_proj: nothing to fuse into


def _times(p: Producer, weights: list[dict]) -> dict[str, float | None]:
    """Milliseconds of each way to compute producer(x) @ w^T (the weights quantised already)."""
    x8, xf8 = p.quantized(INT8), p.quantized(FP8)
    bf = torch.bfloat16
    ways = {
        "bf16": lambda w: p.plain() @ w["bf16"].t(),
        "int8": lambda w: w8a8_gemm(*per_token_quant(p.plain(), INT8), *w[INT8], bf),
        "int8_fused": lambda w: w8a8_gemm(*p.quantized(INT8), *w[INT8], bf),
        "int8_gemm": lambda w: w8a8_gemm(*x8, *w[INT8], bf),
        "int8_torch_int_mm": lambda w: _int_mm(*x8, *w[INT8]),
        "fp8": lambda w: _scaled_mm(*per_token_quant(p.plain(), FP8), *w[FP8]),
        "fp8_fused": lambda w: _scaled_mm(*p.quantized(FP8), *w[FP8]),
        "fp8_gemm": lambda w: _scaled_mm(*xf8, *w[FP8]),
        "fp8_triton_gemm": lambda w: w8a8_gemm(*xf8, *w[FP8], bf),
    }
    return {name: graph_ms(fn, weights) for name, fn in ways.items()}


def graph_ms(fn, weights: list[dict], reps: int = 20) -> float | None:
    """Milliseconds of `fn` on one weight copy, replayed from a CUDA graph as the engine's
    decode steps run (no launch overhead: at decode sizes an eager loop times the CPU), over
    every copy in turn so that no weight is read from L2 (in the model each is read once a
    step). None where an op refuses the shape (torch._int_mm on few rows, say)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile, tune and allocate outside the graph
            for w in weights:
                fn(w)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for w in weights:
                fn(w)
    except Exception as exc:  # noqa: BLE001 -- any refusal (torch's, Triton's compiler) skips
        print(f"  (skipped: {str(exc).splitlines()[0][:100]})", flush=True)
        return None
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps / len(weights)


def _int_mm(x_q, x_s, w_q, w_s) -> torch.Tensor:
    """torch's int8 GEMM (int32 out), the scales applied after it by torch ops."""
    return (torch._int_mm(x_q, w_q.t()).float() * x_s * w_s.view(1, -1)).to(torch.bfloat16)


def _scaled_mm(x_q, x_s, w, w_scale) -> torch.Tensor:
    return torch._scaled_mm(
        x_q, w.t(), scale_a=x_s, scale_b=w_scale.view(1, -1), out_dtype=torch.bfloat16
    )


def _gemm_line(row: dict) -> str:
    cols = [f"{row['shape']:>7} M={row['M']:<5} bf16 {row['bf16_ms'] * 1e3:7.1f}us"]
    for key in (
        "int8",
        "int8_fused",
        "int8_gemm",
        "int8_torch_int_mm",
        "fp8",
        "fp8_fused",
        "fp8_gemm",
        "fp8_triton_gemm",
    ):
        speedup = row.get(f"{key}_speedup")
        cols.append(f"{key} " + ("  -  " if speedup is None else f"x{speedup:4.2f}"))
    return " | ".join(cols)


def model_dir(root: Path, fmt: str) -> Path:
    config = shipped_config("llama-3-8b")
    if FORMATS[fmt] is not None:
        config["quantization_config"] = {
            "quant_method": "smooth_quant",
            "quant_dtype": FORMATS[fmt],
        }
    directory = root / fmt
    directory.mkdir(parents=True, exist_ok=True)
    # config.json alone: with dummy weights and token-id prompts no tokenizer is read.
    (directory / "config.json").write_text(json.dumps(config))
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
    # Prefill-sized chunks compile and tune their kernels outside the measured row.
    prefill_row(pipe, trace, max(1, args.prefill_chunk // args.prefill_len), args.prefill_len)
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
    began = time.perf_counter()
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
    print(f"done in {time.perf_counter() - began:.0f} s; {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The engine ratios are against the first format given.
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
