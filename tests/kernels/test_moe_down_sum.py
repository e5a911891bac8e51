"""The one-launch MoE down projection + token sum against its reference, inside `fused_moe`
against the expert-by-expert reference on both w2 paths, and the batch bound it is chosen by."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.fused_moe import fused_moe, fused_moe_ref, fused_moe_routed, route
from lmdeploy.kernels.moe_down_sum import (
    down_sum_config,
    down_sum_fits,
    moe_down_sum,
    moe_down_sum_ref,
)

from ._util import DEVICE, TOL

# fp32 inputs; bf16 ones round the output once (2^-8 relative) where the reference keeps fp32.
DOWN_TOL = {torch.float32: TOL[torch.float32], torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}
# Through the whole MoE: gate/up and the activation are rounded to bf16 too (test_fused_moe).
MOE_TOL = {torch.float32: TOL[torch.float32], torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2}}


def _experts(num_experts, hidden, inter, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) / inter**0.5
    return w13.to(DEVICE, dtype), w2.to(DEVICE, dtype)


def _routed(num_tokens, num_experts, top_k, renormalize, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g).to(DEVICE)
    return logits, *route(logits, top_k, renormalize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("top_k", [1, 2, 8])
@pytest.mark.parametrize("num_tokens", [1, 2, 3, 7])
def test_matches_reference(num_tokens, top_k, renormalize, dtype):
    # hidden 50: a column-tile tail (8 wide); inter 40: a K tail (64 wide).
    num_experts, hidden, inter = 10, 50, 40
    seed = num_tokens * 10 + top_k
    _, w2 = _experts(num_experts, hidden, inter, dtype, seed)
    _, weights, ids = _routed(num_tokens, num_experts, top_k, renormalize, seed)
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(num_tokens * top_k, inter, generator=g).to(DEVICE, dtype)
    got = moe_down_sum(act, w2, weights, ids)
    assert got.dtype == dtype and got.shape == (num_tokens, hidden)
    torch.testing.assert_close(got, moe_down_sum_ref(act, w2, weights, ids), **DOWN_TOL[dtype])


def test_tiles_above_cover_both_k_loops_and_pair_groups():
    cases = [(8, 40), (1, 40), (3, 64)]  # (top_k, inter) of the tests around this one
    cfgs = [down_sum_config(k, inter, torch.float32) for k, inter in cases]
    even_k = [inter % c["BLOCK_K"] == 0 for (_, inter), c in zip(cases, cfgs, strict=True)]
    assert even_k == [False, False, True]
    assert [c["BLOCK_P"] for c in cfgs] == [4, 1, 4]  # 2 pair groups; one pair; 1 slot masked


def test_even_k_and_a_masked_slot():
    _, w2 = _experts(6, 24, 64, torch.float32, seed=1)
    _, weights, ids = _routed(2, 6, 3, True, seed=1)
    act = torch.randn(6, 64, device=DEVICE)
    got = moe_down_sum(act, w2, weights, ids)
    torch.testing.assert_close(got, moe_down_sum_ref(act, w2, weights, ids), **TOL[torch.float32])


@pytest.mark.parametrize("down_sum", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens, top_k", [(1, 8), (3, 2)])
def test_fused_moe_matches_reference_on_both_w2_paths(num_tokens, top_k, dtype, down_sum):
    num_experts, hidden, inter = 12, 72, 40
    w13, w2 = _experts(num_experts, hidden, inter, dtype, seed=num_tokens)
    logits, weights, ids = _routed(num_tokens, num_experts, top_k, True, seed=num_tokens)
    x = torch.randn(num_tokens, hidden, device=DEVICE).to(dtype)
    want = fused_moe_ref(x, w13, w2, weights, ids)
    got = fused_moe(x, w13, w2, weights, ids, down_sum=down_sum)
    torch.testing.assert_close(got, want, **MOE_TOL[dtype])
    routed = fused_moe_routed(x, logits, w13, w2, top_k, True, down_sum=down_sum)
    torch.testing.assert_close(routed, want, **MOE_TOL[dtype])


def test_one_token_takes_the_one_launch_path_by_default():
    # bf16: the grouped path rounds each pair's row before the sum, so the two paths differ.
    w13, w2 = _experts(16, 64, 32, torch.bfloat16, seed=3)
    _, weights, ids = _routed(1, 16, 8, True, seed=3)
    x = torch.randn(1, 64, device=DEVICE).to(torch.bfloat16)
    default = fused_moe(x, w13, w2, weights, ids)
    assert torch.equal(default, fused_moe(x, w13, w2, weights, ids, down_sum=True))
    assert not torch.equal(default, fused_moe(x, w13, w2, weights, ids, down_sum=False))


def test_unrouted_experts_and_masked_slots_are_never_read():
    _, w2 = _experts(8, 40, 24, torch.float32, seed=4)
    w2[[0, 2, 4, 5, 7]] = float("nan")  # expert 0 too: what a masked slot would point at
    ids = torch.tensor([[3, 1, 6]], device=DEVICE)  # 3 slots in a 4-wide pair group
    weights = torch.tensor([[0.5, 0.3, 0.2]], device=DEVICE)
    act = torch.randn(3, 24, device=DEVICE)
    got = moe_down_sum(act, w2, weights, ids)
    assert got.isfinite().all()
    torch.testing.assert_close(got, moe_down_sum_ref(act, w2, weights, ids), **TOL[torch.float32])


@pytest.mark.parametrize(
    "num_tokens, top_k, num_experts, fits",
    [
        (1, 8, 128, True),  # Qwen3-30B-A3B: one token, no expert read twice
        (4, 8, 128, True),  # 32 pairs = E / 4
        (5, 8, 128, False),
        (8, 8, 256, True),  # 64 pairs: the cap
        (9, 8, 512, False),
        (1, 2, 8, True),  # Mixtral: one token only
        (2, 2, 8, False),
    ],
)
def test_bound_by_counting(num_tokens, top_k, num_experts, fits):
    assert down_sum_fits(num_tokens, top_k, num_experts) == fits


def test_rejects_mismatched_inputs():
    _, w2 = _experts(4, 16, 8, torch.float32, seed=5)
    _, weights, ids = _routed(2, 4, 2, True, seed=5)
    with pytest.raises(AssertionError, match="act must be"):
        moe_down_sum(torch.randn(2, 8, device=DEVICE), w2, weights, ids)
    with pytest.raises(AssertionError, match="contiguous"):
        moe_down_sum(torch.randn(4, 8, device=DEVICE), w2, weights.T.contiguous().T, ids)
