"""Routing and alignment in one launch against `route` + `moe_align`, and the routed fused MoE
against the expert-by-expert reference on both of its paths."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels import fused_moe as fused_moe_module
from lmdeploy.kernels.fused_moe import fused_moe_ref, fused_moe_routed, moe_align, route
from lmdeploy.kernels.moe_routing import route_and_align

from ._util import DEVICE, TOL


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize(
    "num_tokens, num_experts, top_k, block_m",
    [
        (1, 8, 2, 16),
        (5, 6, 2, 4),
        (1, 128, 8, 16),
        (2, 128, 8, 64),
        (37, 8, 3, 16),
        (20, 128, 8, 16),
        (70, 16, 4, 64),
    ],
)
def test_equals_route_then_align(num_tokens, num_experts, top_k, block_m, renormalize):
    torch.manual_seed(num_tokens * num_experts)
    logits = torch.randn(num_tokens, num_experts, device=DEVICE)
    weights, ids, (sorted_ids, expert_ids, num_padded) = route_and_align(
        logits, top_k, renormalize, block_m
    )
    want_weights, want_ids = route(logits, top_k, renormalize)
    want_sorted, want_experts, want_padded = moe_align(want_ids, num_experts, block_m)
    assert torch.equal(ids.long(), want_ids)
    torch.testing.assert_close(weights, want_weights, **TOL[torch.float32])
    assert int(num_padded) == int(want_padded)
    assert torch.equal(sorted_ids, want_sorted)  # pairs in token order within each expert
    used_blocks = int(num_padded) // block_m
    assert torch.equal(expert_ids[:used_blocks], want_experts[:used_blocks])


def test_rows_with_masked_experts_pick_among_the_allowed():
    logits = torch.full((3, 8), float("-inf"), device=DEVICE)
    logits[:, [2, 5]] = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.5]], device=DEVICE)
    weights, ids, _ = route_and_align(logits, 2, True, 16)
    assert ids.tolist() == [[2, 5], [5, 2], [5, 2]]
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, device=DEVICE))


@pytest.mark.parametrize("fused_limit", [10**9, 0])  # the one-launch path, then torch's
@pytest.mark.parametrize("num_tokens", [1, 9, 40])
def test_routed_moe_matches_reference(num_tokens, fused_limit, monkeypatch):
    monkeypatch.setattr(fused_moe_module, "MAX_FUSED_WORK", fused_limit)
    torch.manual_seed(num_tokens)
    num_experts, top_k, hidden, inter = 8, 2, 72, 40
    w13 = torch.randn(num_experts, 2 * inter, hidden, device=DEVICE) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, device=DEVICE) / inter**0.5
    x = torch.randn(num_tokens, hidden, device=DEVICE)
    logits = torch.randn(num_tokens, num_experts, device=DEVICE)
    got = fused_moe_routed(x, logits, w13, w2, top_k, renormalize=True)
    weights, ids = route(logits, top_k, renormalize=True)
    torch.testing.assert_close(got, fused_moe_ref(x, w13, w2, weights, ids), **TOL[torch.float32])
