"""layers/moe.py off CUDA: the loop over routed experts against the kernel's reference, and the
expert weights placed by their loader as the kernel's layout expects."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.layers.moe import FusedMoE
from lmdeploy.kernels.fused_moe import fused_moe_ref, route

HIDDEN, INTER, EXPERTS = 48, 40, 5  # irregular sizes, as the kernel tests use
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _layer(top_k: int, renormalize: bool, dtype: torch.dtype, seed: int = 0) -> FusedMoE:
    g = torch.Generator().manual_seed(seed)
    layer = FusedMoE(EXPERTS, top_k, HIDDEN, INTER, renormalize).to(dtype)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("num_tokens,top_k", [(1, 2), (7, 2), (33, 3), (64, 1)])
def test_cpu_path_matches_the_kernel_reference(num_tokens, top_k, renormalize, dtype):
    layer = _layer(top_k, renormalize, dtype)
    g = torch.Generator().manual_seed(num_tokens)
    x = torch.randn(num_tokens, HIDDEN, generator=g).to(dtype)
    logits = torch.randn(num_tokens, EXPERTS, generator=g)
    weights, ids = route(logits, top_k, renormalize)
    want = fused_moe_ref(x, layer.w13.weight, layer.w2.weight, weights, ids)
    with torch.inference_mode():  # as the engine runs: the activation works in place
        got = layer(x, logits)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_experts_no_token_picked_are_never_read():
    layer = _layer(top_k=2, renormalize=True, dtype=torch.float32)
    logits = torch.full((3, EXPERTS), -10.0)
    logits[:, 1] = logits[:, 3] = 5.0  # every token picks experts 1 and 3
    with torch.no_grad():
        for e in (0, 2, 4):
            layer.w13.weight[e] = float("nan")
            layer.w2.weight[e] = float("nan")
    with torch.inference_mode():
        out = layer(torch.randn(3, HIDDEN), logits)
    assert torch.isfinite(out).all()


def test_loader_places_each_expert_projection_in_the_stacked_weights():
    layer = FusedMoE(EXPERTS, 2, HIDDEN, INTER, renormalize=True)
    gate, up, down = (
        torch.randn(INTER, HIDDEN),
        torch.randn(INTER, HIDDEN),
        torch.randn(HIDDEN, INTER),
    )
    w13, w2 = layer.w13, layer.w2
    w13.weight_loader(w13.weight, gate, (3, 0))
    w13.weight_loader(w13.weight, up, (3, 1))
    w2.weight_loader(w2.weight, down, (3, 0))
    # fused_moe_ref's contract: w13[e] = gate rows then up rows, w2[e] = down.
    assert torch.equal(w13.weight[3], torch.cat([gate, up]))
    assert torch.equal(w2.weight[3], down)
    stacked = torch.randn(EXPERTS, 2 * INTER, HIDDEN)
    w13.weight_loader(w13.weight, stacked)
    assert torch.equal(w13.weight.data, stacked)
