"""The MoE grouped GEMM's decode tiles, swept: each (BLOCK_N, BLOCK_K, warps, stages) timed on
the w13 (SwiGLU) and the w2 product of one layer, for the shapes of `gpu_fused_moe.py`.

Each call routes T tokens to experts permuted at random (the same sharing between tokens), the
calls cycling past 4 L2s of expert bytes and replayed from one CUDA graph, so every expert is
read from HBM as in a decode step. Each config's output is checked against the plain product
first (a config that does not compile, e.g. out of shared memory, is skipped). Prints each
product's time and its fraction of the bytes floor (the picked experts' weights at
HBM_BYTES_PER_S), the engine's config first.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_fused_moe import HBM_BYTES_PER_S, L2_BYTES, SHAPES, _inputs
from triton.testing import do_bench_cudagraph

from lmdeploy.kernels.fused_moe import _grouped_gemm, _moe_config, moe_align

CONFIGS = [
    dict(BLOCK_M=16, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=s)
    for n, k, w, s in itertools.product([16, 32, 64, 128], [64, 128, 256], [4], [3, 4, 6])
] + [
    dict(BLOCK_M=16, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=4)
    for n, k, w in itertools.product([32, 64], [128, 256], [2, 8])
]


def _calls(shape: str, num_tokens: int) -> dict:
    x, w13, w2, weights, ids, _ = _inputs(shape, num_tokens)
    num_experts, top_k, hidden, inter, _ = SHAPES[shape]
    gen = torch.Generator("cuda").manual_seed(num_tokens + 1)
    kw = dict(device="cuda", generator=gen)
    picked = int(ids.unique().numel())
    num_calls = max(2, min(64, -(-4 * L2_BYTES // (picked * 3 * hidden * inter * 2))))
    perms = [torch.randperm(num_experts, device="cuda", generator=gen) for _ in range(num_calls)]
    ids = [p[ids].contiguous() for p in perms]
    act = torch.randn(num_tokens * top_k, inter, **kw).bfloat16()
    return dict(x=x, w13=w13, w2=w2, weights=weights, ids=ids, act=act, picked=picked)


def _want(c: dict, i: int, stage: str) -> torch.Tensor:
    ids = c["ids"][i].reshape(-1)
    top_k = c["ids"][i].shape[1]
    if stage == "w13":
        gate, up = torch.einsum(
            "ph,pnh->pn", c["x"].float().repeat_interleave(top_k, 0), c["w13"][ids].float()
        ).chunk(2, dim=-1)
        return F.silu(gate.bfloat16().float()) * up.bfloat16().float()
    down = torch.einsum("pi,phi->ph", c["act"].float(), c["w2"][ids].float())
    return down * c["weights"].reshape(-1, 1)


def _time_stage(c: dict, stage: str, cfg: dict) -> float:
    """Microseconds a call, or raises if the config does not compile or is wrong."""
    num_experts = c["w13"].shape[0]
    aligns = [moe_align(ids, num_experts, cfg["BLOCK_M"]) for ids in c["ids"]]
    pairs, inter = c["act"].shape
    hidden = c["x"].shape[1]
    if stage == "w13":
        out = torch.empty(pairs, inter, dtype=torch.bfloat16, device="cuda")
        top_k = c["ids"][0].shape[1]

        def fn(i: int) -> None:
            _grouped_gemm(c["x"], c["w13"], out, aligns[i], None, top_k, cfg, swiglu=True)
    else:
        out = torch.empty(pairs, hidden, dtype=torch.bfloat16, device="cuda")

        def fn(i: int) -> None:
            _grouped_gemm(c["act"], c["w2"], out, aligns[i], c["weights"], 1, cfg)

    fn(0)
    torch.testing.assert_close(out.float(), _want(c, 0, stage), atol=3e-2, rtol=3e-2)
    num_calls = len(aligns)
    return do_bench_cudagraph(lambda: [fn(i) for i in range(num_calls)]) * 1e3 / num_calls


def run(shape: str, num_tokens: int) -> list[dict]:
    c = _calls(shape, num_tokens)
    num_experts, top_k, hidden, inter, _ = SHAPES[shape]
    rows = []
    for stage, mats, k in (("w13", 2, hidden), ("w2", 1, inter)):
        engine = _moe_config(num_tokens * top_k, num_experts, torch.bfloat16, k=k)
        floor_us = c["picked"] * mats * hidden * inter * 2 / HBM_BYTES_PER_S * 1e6
        for cfg in [engine] + [x for x in CONFIGS if x != engine]:
            try:
                us = _time_stage(c, stage, cfg)
            except Exception as e:  # noqa: BLE001 - a config that cannot run is a sweep result
                print(
                    f"{shape} T={num_tokens} {stage} {cfg}: skipped ({type(e).__name__}: {str(e)[:160]})"
                )
                continue
            row = dict(shape=shape, tokens=num_tokens, stage=stage, cfg=cfg, us=us)
            row |= dict(floor_us=floor_us, of_floor=floor_us / us, engine=cfg == engine)
            rows.append(row)
            print(json.dumps(row), flush=True)
        best = min((r for r in rows if r["stage"] == stage), key=lambda r: r["us"])
        print(f"BEST {shape} T={num_tokens} {stage}: {best['us']:.1f} us {best['cfg']}")
    del c
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["qwen3-30b-a3b:1", "mixtral-8x7b:1"])
    ap.add_argument("--output", type=Path, default=Path("benchmark/results/gpu_moe_tiles.json"))
    args = ap.parse_args()
    rows = []
    for case in args.cases:
        shape, tokens = case.split(":")
        rows += run(shape, int(tokens))
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
