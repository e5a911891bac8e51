"""The CPU's GGUF integer kernels (`backends/cpu/csrc/gguf_*.c`) against float32, per type.

For each type the kernels read, one [N, K] weight as its GGUF blocks, multiplied by 1 and by 16
activation rows through `gguf_linear.matmul` (activation quantization included), beside the
float32 `torch.nn.functional.linear` of the same shape (the default 4096 x 4096 float32 weight,
64 MB, outgrows most L3 caches, as a model's weights do). Prints the median time, the weight
bytes read per second, and the speed-up over float32, with the CPU's flags and thread count.

Run it on a quiet machine: other work on the cores changes every figure.

    .venv/bin/python benchmark/cpu_gguf_kernels.py [--n 4096] [--k 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gguf
import numpy as np
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_linear

# Where each k-quant keeps its fp16 super-block scale(s): random bytes elsewhere are valid codes.
_K_SCALES = {"Q4_K": slice(0, 4), "Q6_K": slice(208, 210)}


def weight_blocks(qtype: str, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    kind = gguf.GGMLQuantizationType[qtype]
    if qtype not in _K_SCALES:  # gguf-py quantizes these
        w = rng.standard_normal((n, k)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(gguf.quants.quantize(w, kind)))
    values, nbytes = gguf_linear.BLOCKS[qtype]
    blocks = rng.integers(0, 256, (n * k // values, nbytes), dtype=np.uint8)
    halves = _K_SCALES[qtype]
    scales = np.full((len(blocks), (halves.stop - halves.start) // 2), 1e-3, np.float16)
    blocks[:, halves] = scales.view(np.uint8)  # normal floats: no denormal slow paths
    return torch.from_numpy(blocks.reshape(n, -1))


def median_s(fn: Callable[[], object], repeats: int = 50) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="output features")
    parser.add_argument("--k", type=int, default=4096, help="input features (a multiple of 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    lib = gguf_linear.library()
    if lib is None:
        raise SystemExit("the GGUF kernels are unavailable here (they need AVX2/FMA/F16C and cc)")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    dense = torch.randn(args.n, args.k)
    print(f"N={args.n} K={args.k} threads={args.threads} VNNI={lib.uses_vnni()}")
    print("| type | rows | ms | weight GB/s | vs float32 |")
    print("|---|---|---|---|---|")
    for rows in (1, 16):
        x = torch.randn(rows, args.k)
        ref = median_s(lambda x=x: torch.nn.functional.linear(x, dense))
        print(f"| F32 | {rows} | {ref * 1e3:.3f} | {dense.numel() * 4 / ref / 1e9:.1f} | 1.00x |")
        for qtype in gguf_linear.TYPE_IDS:
            blocks = weight_blocks(qtype, args.n, args.k, rng)
            t = median_s(lambda x=x, b=blocks, q=qtype: gguf_linear.matmul(x, b, q, args.n))
            gbs = blocks.numel() / t / 1e9
            print(f"| {qtype} | {rows} | {t * 1e3:.3f} | {gbs:.1f} | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()
