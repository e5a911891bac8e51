"""The fused MoE kernel against its expert-by-expert reference, the alignment's layout, and the
routing against transformers' Mixtral and Qwen3-MoE blocks."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.fused_moe import _moe_config, fused_moe, fused_moe_ref, moe_align, route

from ._util import DEVICE, TOL, gpu_cases

# The kernel keeps gate/up and the activation in the input dtype (the reference keeps fp32), so
# bf16 differs by a few of its ulps (2^-8 relative) after three roundings.
MOE_TOL = {torch.float32: TOL[torch.float32], torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2}}


def _weights(num_experts, hidden, inter, dtype):
    # Scaled so activations stay O(1) and a tolerance means the same at every size.
    w13 = torch.randn(num_experts, 2 * inter, hidden, device=DEVICE) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, inter, device=DEVICE) / inter**0.5
    return w13.to(dtype), w2.to(dtype)


def _routing(num_tokens, num_experts, top_k, experts=None):
    logits = torch.randn(num_tokens, num_experts, device=DEVICE)
    if experts is not None:  # only these experts can win
        allowed = torch.zeros(num_experts, dtype=torch.bool, device=DEVICE)
        allowed[experts] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    return route(logits, top_k, renormalize=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_experts, top_k", [(4, 1), (8, 2)])
@pytest.mark.parametrize("num_tokens", [1, 3, 17, 33, 70])  # 70: the prefill tiles
def test_matches_reference(num_tokens, num_experts, top_k, dtype):
    torch.manual_seed(num_tokens)
    hidden, inter = 72, 40  # K tails on both GEMMs, N tails (80 and 72 columns)
    w13, w2 = _weights(num_experts, hidden, inter, dtype)
    x = torch.randn(num_tokens, hidden, device=DEVICE).to(dtype)
    weights, ids = _routing(num_tokens, num_experts, top_k)
    got = fused_moe(x, w13, w2, weights, ids)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, fused_moe_ref(x, w13, w2, weights, ids), **MOE_TOL[dtype])


@pytest.mark.parametrize("hidden, inter", [(4100, 24), (48, 4096)])  # a deep w13, a deep w2
def test_deep_reductions_take_their_own_tiles_and_match_reference(hidden, inter):
    """At decode sizes a product over K >= DEEP_K (Mixtral's) runs narrower, deeper tiles than
    the other product of the same layer, over the one alignment both share."""
    from lmdeploy.kernels.fused_moe import DEEP_K

    assert _moe_config(4, 4, torch.bfloat16, k=max(hidden, inter)) != _moe_config(
        4, 4, torch.bfloat16, k=min(hidden, inter)
    )
    assert max(hidden, inter) >= DEEP_K > min(hidden, inter)
    torch.manual_seed(hidden)
    w13, w2 = _weights(4, hidden, inter, torch.bfloat16)
    x = torch.randn(2, hidden, device=DEVICE).bfloat16()
    weights, ids = _routing(2, 4, 2)
    got = fused_moe(x, w13, w2, weights, ids)
    torch.testing.assert_close(
        got, fused_moe_ref(x, w13, w2, weights, ids), **MOE_TOL[torch.bfloat16]
    )


def test_cases_above_cover_decode_and_prefill_tiles():
    assert {
        _moe_config(t * k, e, torch.float32)["BLOCK_M"] for t, e, k in [(33, 8, 2), (70, 4, 1)]
    } == {16, 64}


@pytest.mark.parametrize("num_tokens", [1, 33])
def test_unrouted_experts_are_never_read(num_tokens):
    torch.manual_seed(2)
    w13, w2 = _weights(8, 48, 24, torch.float32)
    unused = [0, 2, 4, 5, 6, 7]
    w13[unused], w2[unused] = float("nan"), float("nan")  # any read of them shows in the output
    x = torch.randn(num_tokens, 48, device=DEVICE)
    weights, ids = _routing(num_tokens, 8, 2, experts=[1, 3])
    got = fused_moe(x, w13, w2, weights, ids)
    torch.testing.assert_close(got, fused_moe_ref(x, w13, w2, weights, ids), **TOL[torch.float32])


@pytest.mark.parametrize(
    "num_tokens, hidden, inter, num_experts, top_k",
    gpu_cases((1, 2048, 768, 128, 8), (256, 2048, 768, 128, 8), (64, 4096, 14336, 8, 2)),
)
def test_real_shapes_bf16(num_tokens, hidden, inter, num_experts, top_k):
    torch.manual_seed(3)
    w13, w2 = _weights(num_experts, hidden, inter, torch.bfloat16)
    x = torch.randn(num_tokens, hidden, device=DEVICE, dtype=torch.bfloat16)
    weights, ids = _routing(num_tokens, num_experts, top_k)
    want = fused_moe_ref(x, w13, w2, weights, ids)
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids), want, **MOE_TOL[torch.bfloat16])


@pytest.mark.parametrize("num_tokens, top_k, block_m", [(1, 2, 16), (17, 2, 16), (33, 1, 4)])
def test_align_groups_pairs_by_expert_in_padded_blocks(num_tokens, top_k, block_m):
    torch.manual_seed(4)
    num_experts = 8
    ids = _routing(num_tokens, num_experts, top_k, experts=[1, 3, 6])[1]
    sorted_ids, expert_ids, num_padded = moe_align(ids, num_experts, block_m)
    num_pairs = ids.numel()
    counts = torch.bincount(ids.flatten(), minlength=num_experts)
    want_blocks = (counts + block_m - 1) // block_m
    assert int(num_padded) == int(want_blocks.sum()) * block_m
    used = sorted_ids[: int(num_padded)]
    assert sorted(used[used < num_pairs].tolist()) == list(range(num_pairs))  # each pair once
    assert (sorted_ids[int(num_padded) :] == num_pairs).all()  # the tail is padding
    flat = ids.flatten()
    for b in range(int(num_padded) // block_m):
        block = used[b * block_m : (b + 1) * block_m]
        pairs = block[block < num_pairs].long()
        assert pairs.numel() > 0, "no block without a pair: unused experts get none"
        assert (flat[pairs] == expert_ids[b]).all()
        assert (pairs.diff() > 0).all(), "pairs of an expert keep token order"
    assert torch.equal(expert_ids[: int(num_padded) // block_m].bincount(minlength=8), want_blocks)


def test_align_grid_bound_is_exact_at_decode():
    ids = torch.tensor([[5, 2, 7]], device=DEVICE)
    sorted_ids, expert_ids, num_padded = moe_align(ids, 8, 16)
    assert expert_ids.tolist() == [2, 5, 7] and int(num_padded) == 48
    assert sorted_ids.view(3, 16)[:, 0].tolist() == [1, 0, 2]


def test_launcher_rejects_mismatched_inputs():
    w13, w2 = _weights(4, 32, 16, torch.float32)
    x = torch.randn(3, 32, device=DEVICE)
    weights, ids = _routing(3, 4, 2)
    with pytest.raises(AssertionError, match="w2 must be"):
        fused_moe(x, w13, w2.transpose(1, 2), weights, ids)
    with pytest.raises(AssertionError, match="integer"):
        fused_moe(x, w13, w2, weights, ids.float())
    with pytest.raises(AssertionError, match="contiguous"):
        fused_moe(torch.randn(32, 3, device=DEVICE).T, w13, w2, weights, ids)


def _init_(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(5)
    for p in module.parameters():  # the expert weights are allocated with torch.empty
        torch.nn.init.normal_(p, std=0.1)
    return module.to(DEVICE).eval()


def _check_block(block, router, top_k: int, renormalize: bool) -> None:
    x = torch.randn(2, 9, router.hidden_dim, device=DEVICE)
    flat = x.view(-1, router.hidden_dim)
    logits, want_weights, want_ids = router(flat)
    weights, ids = route(logits, top_k, renormalize)
    torch.testing.assert_close(ids, want_ids, rtol=0, atol=0)
    torch.testing.assert_close(weights, want_weights.float(), **TOL[torch.float32])
    sums = weights.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums)) == renormalize
    experts = block.experts
    got = fused_moe(flat, experts.gate_up_proj.data, experts.down_proj.data, weights, ids)
    with torch.no_grad():
        want = block(x).view(-1, router.hidden_dim)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_routing_and_output_match_transformers_mixtral():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=56, intermediate_size=40, num_local_experts=6, num_experts_per_tok=2
    )
    block = _init_(MixtralSparseMoeBlock(cfg))
    _check_block(block, block.gate, top_k=2, renormalize=True)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_routing_and_output_match_transformers_qwen3_moe(norm_topk_prob):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(
        hidden_size=56,
        moe_intermediate_size=24,
        num_experts=8,
        num_experts_per_tok=3,
        norm_topk_prob=norm_topk_prob,
    )
    block = _init_(Qwen3MoeSparseMoeBlock(cfg))
    _check_block(block, block.gate, top_k=3, renormalize=norm_topk_prob)
