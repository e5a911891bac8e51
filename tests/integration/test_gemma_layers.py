"""Gemma's layers against transformers' own modules in bfloat16, where the order of roundings
shows (the family test runs in float32): the norm, the GELU-tanh gate, the scaled embedding."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN
from transformers.models.gemma2.modeling_gemma2 import (
    Gemma2RMSNorm,
    Gemma2TextScaledWordEmbedding,
)

from lmdeploy.adapters.engines.pytorch.layers.activation import GeluTanhAndMul, soft_cap
from lmdeploy.adapters.engines.pytorch.layers.embedding import VocabEmbedding
from lmdeploy.adapters.engines.pytorch.layers.norm import GemmaRMSNorm

BF16 = torch.bfloat16


def test_gemma_rms_norm_rounds_once_after_the_weight_as_transformers():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 96, generator=g) * 3).to(BF16)
    h = torch.randn(7, 96, generator=g).to(BF16)
    theirs = Gemma2RMSNorm(96, eps=1e-6).to(BF16)
    ours = GemmaRMSNorm(96, eps=1e-6).to(BF16)
    with torch.no_grad():
        theirs.weight.normal_(0, 0.5, generator=g)
        ours.weight.copy_(theirs.weight)
        assert torch.equal(ours(x), theirs(x))
        normed, residual = ours(h, x.clone())
        assert torch.equal(residual, x + h)
        assert torch.equal(normed, theirs(x + h))


def test_gelu_tanh_and_mul_is_transformers_gelu_pytorch_tanh_gate():
    g = torch.Generator().manual_seed(1)
    gate_up = (torch.randn(5, 2 * 64, generator=g) * 2).to(BF16)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = ACT2FN["gelu_pytorch_tanh"](gate) * up
    assert torch.equal(GeluTanhAndMul()(gate_up.clone()), expected)


def test_scaled_embedding_rounds_the_scale_to_the_weight_dtype_as_transformers():
    theirs = Gemma2TextScaledWordEmbedding(50, 40, padding_idx=0, embed_scale=40**0.5).to(BF16)
    ours = VocabEmbedding(50, 40, scale=40**0.5).to(BF16)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    ids = torch.tensor([3, 0, 49, 7])
    assert torch.equal(ours(ids), theirs(ids))


def test_soft_cap_bounds_and_keeps_small_values():
    x = torch.tensor([-1e4, -1.0, 0.0, 0.01, 1e4])
    capped = soft_cap(x.clone(), 30.0)
    assert capped.abs().max() <= 30.0
    torch.testing.assert_close(capped, 30.0 * torch.tanh(x / 30.0))
    assert soft_cap(x, None) is x
