"""One-row GEMVs over Q4 blocks: today's `gguf_float` layout against the 16-row repacked one.

The default model's (SmolLM2-135M) 30 layers of shapes, qkv 960x576, o 576x576, gate_up
3072x576, down 576x1536 (66 MB of Q4_1 blocks, beyond L2 and most of L3 as in a decode step),
each layer's four GEMVs called in turn. The two layouts alternate round by round (A/B, so
drifting load hits both), per thread count; prints the median step time, the weight bytes read
per second and the ratio. Both go through ctypes with one OpenMP region a call, so the ratio
includes the same per-call overhead on each side.

    .venv/bin/python benchmark/cpu_repack_gemv.py [--qtype Q4_1] [--rounds 15] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_float, gguf_repack

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of qkv, o, gate_up, down
LAYERS = 30
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}


def random_blocks(qtype: str, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Random codes with small normal fp16 scales (no subnormal slow paths)."""
    nbytes = BLOCK_BYTES[qtype]
    blocks = rng.integers(0, 256, (n * k // 32, nbytes), dtype=np.uint8)
    head = 4 if qtype == "Q4_1" else 2
    halves = np.full((len(blocks), head // 2), 1e-3, np.float16)
    blocks[:, :head] = halves.view(np.uint8)
    return torch.from_numpy(blocks.reshape(n, -1))


def step_seconds(calls: list, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        for call in calls:
            call()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qtype", default="Q4_1", choices=list(BLOCK_BYTES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps a round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not gguf_repack.gemv_available():
        raise SystemExit("the repacked GEMV needs AVX-512F and a C compiler")
    rng = np.random.default_rng(0)
    weights = [
        (n, k, random_blocks(args.qtype, n, k, rng)) for _ in range(LAYERS) for n, k in SHAPES
    ]
    packed = [gguf_repack.repack(b, args.qtype, n) for n, _, b in weights]
    xs = {k: torch.randn(1, k) for _, k in SHAPES}
    old = [
        (lambda n=n, k=k, b=b: gguf_float.matmul(xs[k], b, args.qtype, n)) for n, k, b in weights
    ]
    new = [
        (lambda n=n, k=k, p=p: gguf_repack.gemv(xs[k], p, args.qtype, n))
        for (n, k, _), p in zip(weights, packed, strict=True)
    ]
    for (n, k, b), p in zip(weights[:4], packed[:4], strict=True):  # same numbers, same order
        y_old = gguf_float.matmul(xs[k], b, args.qtype, n)
        y_new = gguf_repack.gemv(xs[k], p, args.qtype, n)
        assert torch.allclose(y_old, y_new, rtol=1e-4, atol=1e-4), (n, k)
    total = sum(b.numel() for _, _, b in weights)
    print(f"{args.qtype}, {LAYERS} layers x {SHAPES}, {total / 1e6:.1f} MB of blocks")
    print("| threads | gguf_float ms | GB/s | repacked ms | GB/s | ratio |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        step_seconds(old + new, 2)  # warm-up: pages, caches, the thread pool
        times_old, times_new = [], []
        for _ in range(args.rounds):
            times_old.append(step_seconds(old, args.steps))
            times_new.append(step_seconds(new, args.steps))
        t_old, t_new = statistics.median(times_old), statistics.median(times_new)
        print(
            f"| {threads} | {t_old * 1e3:.2f} | {total / t_old / 1e9:.1f} | {t_new * 1e3:.2f} | "
            f"{total / t_new / 1e9:.1f} | {t_old / t_new:.2f}x |"
        )


if __name__ == "__main__":
    main()
