"""Sampling time on a GPU: the torch path (sort or top-k) against the fused Triton kernel.

For B rows of a 128256-token vocabulary (Llama 3), each parameter mix is timed through the
engine's own `sampling.sample` (token rules, then either path), median of CUDA-event timings.
The mixes: top-p only (the torch path sorts the vocabulary), top-k only (it takes a top-k),
and the rows mixing greedy, top-k, top-p and min-p.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton.testing

from lmdeploy.adapters.engines.pytorch.sampling import fused as fused_sampling
from lmdeploy.adapters.engines.pytorch.sampling.batch import SamplingBatch
from lmdeploy.adapters.engines.pytorch.sampling.sampler import sample
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence

MIXES = {
    "top_p": lambda row: dict(temperature=0.8, top_k=0, top_p=0.9),
    "top_k": lambda row: dict(temperature=0.8, top_k=50),
    "mixed": lambda row: [
        dict(temperature=0.0),
        dict(temperature=0.7, top_k=40),
        dict(temperature=1.0, top_k=0, top_p=0.95),
        dict(temperature=0.9, top_k=0, min_p=0.05),
        dict(temperature=0.6, top_k=100, top_p=0.8, min_p=0.02),
    ][(row + 2) % 5],  # a batch of one gets a top-p row
}


def _batch(mix: str, rows: int) -> SamplingBatch:
    seqs = [Sequence([1, 2, 3], SamplingParams(**MIXES[mix](row)), 64) for row in range(rows)]
    return SamplingBatch.from_seqs(seqs, torch.device("cuda"))


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def run(vocab: int, batch_sizes: list[int]) -> list[dict]:
    rows, dispatch = [], fused_sampling.applies
    for b in batch_sizes:
        logits = torch.randn(b, vocab, device="cuda") * 2
        logits[:, :32] += 6 * torch.rand(b, 32, device="cuda")
        for mix in MIXES:
            batch = _batch(mix, b)
            fused_sampling.applies = lambda logits, batch: False
            torch_ms = _time(lambda batch=batch, logits=logits: sample(logits, batch))
            fused_sampling.applies = lambda logits, batch: True
            fused_ms = _time(lambda batch=batch, logits=logits: sample(logits, batch))
            fused_sampling.applies = dispatch
            used = "fused" if dispatch(logits, batch) else "torch"
            rows.append(
                {
                    "batch": b,
                    "mix": mix,
                    "torch_ms": torch_ms,
                    "fused_ms": fused_ms,
                    "engine_uses": used,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/sampling_cuda.json"))
    args = ap.parse_args()
    rows = run(args.vocab, args.batch_sizes)
    print(f"{'batch':>6} {'mix':>6} {'torch ms':>9} {'fused ms':>9} {'speed-up':>9} {'engine':>7}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['mix']:>6} {r['torch_ms']:>9.3f} {r['fused_ms']:>9.3f} "
            f"{r['torch_ms'] / r['fused_ms']:>8.2f}x {r['engine_uses']:>7}"
        )
    report = {"device": torch.cuda.get_device_name(), "vocab": args.vocab, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
