"""Fused MoE on a GPU: the Triton grouped GEMM against the expert-by-expert torch reference.

For each model shape (bf16 random weights, random router logits through `route`) and each
token count T, the kernel's output is first checked against `fused_moe_ref`; then both are
timed with `triton.testing.do_bench` (median; it clears L2 before each call, so every expert is
read from HBM). Achieved GB/s counts the bytes of the experts actually read: U * 3 * H * I * 2,
U the distinct experts the batch routes to (all of them once T * k >> E), against --peak-gbps.

In the engine a decode step runs under a CUDA graph, where launch overhead is not on the host
but each kernel still costs its few microseconds: the `graph` columns replay one layer's MoE
from the router logits, routed and aligned in one launch (`fused_moe_routed`) against the torch
routing and alignment (`route` + `fused_moe`), and the routing/alignment alone both ways (what
sets `moe_routing.MAX_FUSED_WORK`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton.testing
from cuda_graph_timing import graph_ms

from lmdeploy.kernels.fused_moe import fused_moe, fused_moe_ref, fused_moe_routed, moe_align, route
from lmdeploy.kernels.moe_routing import route_and_align

SHAPES = {  # num_experts, top_k, hidden, intermediate, renormalize
    "qwen3-30b-a3b": (128, 8, 2048, 768, True),
    "mixtral-8x7b": (8, 2, 4096, 14336, True),
}
TOL = {"atol": 3e-2, "rtol": 3e-2}  # the test suite's bf16 tolerance (tests/kernels)


def _time(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _inputs(shape: str, num_tokens: int) -> tuple:
    num_experts, top_k, hidden, inter, renormalize = SHAPES[shape]
    gen = torch.Generator("cuda").manual_seed(num_tokens)
    kw = dict(device="cuda", generator=gen)
    # Scaled so activations stay O(1): the tolerance means the same at every size.
    w13 = (torch.randn(num_experts, 2 * inter, hidden, **kw) / hidden**0.5).bfloat16()
    w2 = (torch.randn(num_experts, hidden, inter, **kw) / inter**0.5).bfloat16()
    x = torch.randn(num_tokens, hidden, **kw).bfloat16()
    logits = torch.randn(num_tokens, num_experts, **kw)
    weights, ids = route(logits, top_k, renormalize)
    return x, w13, w2, weights, ids, logits


def run(shape: str, token_counts: list[int], peak_gbps: float) -> list[dict]:
    rows = []
    num_experts, top_k, hidden, inter, renorm = SHAPES[shape]
    for t in token_counts:
        x, w13, w2, weights, ids, logits = _inputs(shape, t)
        args = (x, w13, w2, weights, ids)
        got, want = fused_moe(*args), fused_moe_ref(*args)
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, t=t: f"{shape} T={t}: {m}")
        got_routed = fused_moe_routed(x, logits, w13, w2, top_k, renorm)
        torch.testing.assert_close(got_routed, want, **TOL, msg=lambda m, t=t: f"routed T={t}: {m}")

        def routed(x=x, logits=logits, w13=w13, w2=w2):
            return fused_moe_routed(x, logits, w13, w2, top_k, renorm)

        def torch_routed(x=x, logits=logits, w13=w13, w2=w2):
            return fused_moe(x, w13, w2, *route(logits, top_k, renorm))

        def routing(logits=logits):
            return route_and_align(logits, top_k, renorm, 16)

        def torch_routing(logits=logits):
            return moe_align(route(logits, top_k, renorm)[1], num_experts, 16)

        graph = {
            "routed_graph_ms": graph_ms(routed),
            "torch_routed_graph_ms": graph_ms(torch_routed),
            "route_align_graph_ms": graph_ms(routing),
            "torch_route_align_graph_ms": graph_ms(torch_routing),
        }
        experts_read = int(ids.unique().numel())
        expert_bytes = experts_read * 3 * hidden * inter * w13.element_size()
        fused_ms = _time(lambda args=args: fused_moe(*args))
        ref_ms = _time(lambda args=args: fused_moe_ref(*args))
        # BLOCK_M 16, the decode tiles: what the alignment costs where it matters most.
        align_ms = _time(lambda ids=ids: moe_align(ids, num_experts, 16))
        gbps = expert_bytes / fused_ms / 1e6
        rows.append(
            {
                "shape": shape,
                "tokens": t,
                "experts_read": experts_read,
                "expert_mb": expert_bytes / 1e6,
                "fused_ms": fused_ms,
                "ref_ms": ref_ms,
                "align_ms": align_ms,
                "fused_gbps": gbps,
                "fraction_of_peak": gbps / peak_gbps,
                "max_abs_err": float((got.float() - want.float()).abs().max()),
                **graph,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del x, w13, w2, got, want
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64, 128, 256, 512])
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="HBM peak (H200: 4.8 TB/s)")
    ap.add_argument("--out", type=Path, default=Path("benchmark/results/fused_moe_cuda.json"))
    args = ap.parse_args()
    rows = [r for shape in args.shapes for r in run(shape, args.tokens, args.peak_gbps)]
    head = f"{'shape':>14} {'T':>4} {'experts':>7} {'MB':>8} {'fused ms':>9} {'ref ms':>8}"
    print(head + f" {'align ms':>9} {'GB/s':>7} {'of peak':>8} {'speed-up':>9}")
    for r in rows:
        print(
            f"{r['shape']:>14} {r['tokens']:>4} {r['experts_read']:>7} {r['expert_mb']:>8.1f} "
            f"{r['fused_ms']:>9.3f} {r['ref_ms']:>8.3f} {r['align_ms']:>9.3f} "
            f"{r['fused_gbps']:>7.0f} {r['fraction_of_peak']:>7.0%} "
            f"{r['ref_ms'] / r['fused_ms']:>8.2f}x"
        )
    print(
        "\nUnder a CUDA graph, ms a call (one layer's MoE from the router logits; routing alone):"
    )
    print(
        f"{'shape':>14} {'T':>4} {'one-launch':>11} {'torch-routed':>13} {'route+align':>12} {'torch':>8}"
    )
    for r in rows:
        print(
            f"{r['shape']:>14} {r['tokens']:>4} {r['routed_graph_ms']:>11.4f} "
            f"{r['torch_routed_graph_ms']:>13.4f} {r['route_align_graph_ms']:>12.4f} "
            f"{r['torch_route_align_graph_ms']:>8.4f}"
        )
    report = {
        "device": torch.cuda.get_device_name(),
        "dtype": "bfloat16",
        "peak_gbps": args.peak_gbps,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
