"""KV cache int8/int4 (`quant_policy` 8/4) against the float cache, at the same cache bytes.

The 1000-request ShareGPT-like workload of profile_throughput.py runs once per quant_policy
with the KV cache given the same number of bytes (`--kv-gib`): each policy gets as many
blocks as those bytes hold (int8 about 2x, int4 about 4x the float blocks), so more sequences
fit at once. Each policy runs in its own process, after its own unmeasured warm-up requests: in
one process an engine that followed another's full run ran up to ~20% slower than alone (an
H200, benchmark/NOTES.md session 9), whichever policy it had. Prints requests/s side by side
and each one's ratio to quant_policy 0; writes benchmark/results/gpu_kv_quant.json. Pick a
budget under which the float cache limits concurrency (a few GiB on Llama-3-8B at max batch
512), else every policy runs the same batch.

    python benchmark/gpu_kv_quant.py --load-format dummy --model llama-3-8b --kv-gib 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_throughput import run_ours  # noqa: E402
from workloads import sharegpt_like  # noqa: E402

from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig  # noqa: E402
from lmdeploy.adapters.engines.pytorch.runner.kv_cache import kv_bytes_per_token  # noqa: E402
from lmdeploy.adapters.loaders import dummy  # noqa: E402

BLOCK_SIZE = 64  # PytorchEngineConfig's default


def blocks_for(model: str, budget_bytes: int, dtype_bytes: int, quant_policy: int) -> int:
    """Blocks of `quant_policy` that `budget_bytes` hold for the shipped shape `model`."""
    cfg = ModelConfig.from_hf(dummy.shipped_config(model))
    per_token = kv_bytes_per_token(
        cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype_bytes, quant_policy
    )
    return budget_bytes // (per_token * BLOCK_SIZE)


def run_policy(args: argparse.Namespace, policy: int) -> dict:
    """The measured run of one policy (after `--warmup-requests` unmeasured ones)."""
    requests = sharegpt_like(args.num_requests, args.seed, args.mean_in, args.mean_out)
    vocab = 128256 if args.load_format == "dummy" else 49152
    dtype_bytes = 4 if args.dtype == "float32" else 2
    run_args = argparse.Namespace(
        **vars(args),
        cache_max_entry_count=0.8,
        quant_policy=policy,
        num_gpu_blocks=blocks_for(args.model, int(args.kv_gib * 2**30), dtype_bytes, policy),
    )
    if args.warmup_requests:  # the first engine of a process runs ~10% slow
        run_ours(run_args, requests[: args.warmup_requests], vocab)
    return run_ours(run_args, requests, vocab)[0]


def print_table(rows: dict) -> None:
    """Each policy's row against quant_policy 0's, with where its run lost time."""
    base = rows.get(0)
    print(
        f"{'quant_policy':>12} {'kv blocks':>10} {'req/s':>9} {'tok/s':>10} {'vs 0':>6}"
        f" {'steps':>6} {'preempt':>8} {'prompt steps s':>15}"
    )
    for policy, row in rows.items():
        ratio = row["requests_per_s"] / base["requests_per_s"] if base else float("nan")
        row["ratio_requests_per_s"] = ratio
        prompt = row["time"]["groups"].get("with prompt tokens", {"seconds": 0.0})
        print(
            f"{policy:>12} {row['kv_blocks']:>10} {row['requests_per_s']:>9.2f} "
            f"{row['output_tokens_per_s']:>10.1f} {ratio:>5.2f}x {row['steps']:>6}"
            f" {row['preemptions']:>8} {prompt['seconds']:>15.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--load-format", default="dummy", choices=["auto", "dummy"])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--kv-gib", type=float, default=4.0, help="KV cache bytes, every policy")
    parser.add_argument("--policies", type=int, nargs="+", default=[0, 8, 4])
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--mean-in", type=float, default=220)
    parser.add_argument("--mean-out", type=float, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup-requests", type=int, default=100, help="an unmeasured first run (0: none)"
    )
    parser.add_argument("--output", default="benchmark/results/gpu_kv_quant.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a policy, in this process
    parser.add_argument("--row-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        Path(args.row_file).write_text(json.dumps(run_policy(args, args.one)))
        return
    rows = {}
    for policy in args.policies:
        with tempfile.NamedTemporaryFile(suffix=".json") as row_file:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", str(policy)]
            subprocess.run([*cmd, "--row-file", row_file.name], check=True)
            rows[policy] = json.loads(Path(row_file.name).read_text())
        headline = {k: v for k, v in rows[policy].items() if k != "time"}  # the step lists: JSON
        print(f"quant_policy={policy}: {json.dumps(headline)}", flush=True)
    print(f"{args.num_requests} requests, KV cache {args.kv_gib} GiB, {args.model} ({args.dtype})")
    print_table(rows)
    report = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "policies": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
