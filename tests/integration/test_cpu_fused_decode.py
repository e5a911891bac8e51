"""csrc/fused_decode.c: a one-row decode step's decoder layers in one call, against the layers'
math in torch on random weights (GGUF blocks and float32 panels), over a paged context."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.backends.cpu import fused_decode, gguf_repack
from lmdeploy.adapters.engines.pytorch.backends.cpu.gguf_linear import GGUFLinear
from lmdeploy.adapters.engines.pytorch.backends.cpu.linear import PackedLinear

pytestmark = pytest.mark.skipif(not fused_decode.available(), reason="needs a C compiler, AVX2")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, BLOCK = 96, 4, 2, 32, 160, 4
EPS, SCALE = 1e-5, HEAD_DIM**-0.5
TABLE = [5, 2, 7]  # three blocks, out of order
CONTEXT = 11  # the new token at position 10: the third block's third slot


def _linear(
    kind: str, n: int, k: int, gen: torch.Generator
) -> tuple[torch.nn.Module, torch.Tensor]:
    """A kernel module of this kind and the float32 weight it computes with."""
    w = torch.randn(n, k, generator=gen) * 0.1
    if kind == "f32":
        return PackedLinear(w, None), w
    qtype = gguf.GGMLQuantizationType[kind]
    blocks = gguf.quants.quantize(w.numpy(), qtype)
    dense = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).copy())
    return GGUFLinear(torch.from_numpy(np.ascontiguousarray(blocks)), kind, None), dense


def _layer(kinds: tuple[str, str, str, str], gen: torch.Generator):
    caches = [torch.randn(8, BLOCK, KV_HEADS, HEAD_DIM, generator=gen) for _ in range(2)]
    shapes = [((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN), (HIDDEN, HEADS * HEAD_DIM)]
    shapes += [(2 * INTER, HIDDEN), (HIDDEN, INTER)]
    linears = [_linear(kind, n, k, gen) for kind, (n, k) in zip(kinds, shapes, strict=True)]
    norms = [1 + 0.1 * torch.randn(HIDDEN, generator=gen) for _ in range(2)]
    weights = fused_decode.LayerWeights(*norms, *(m for m, _ in linears), *caches)
    return weights, [w for _, w in linears]


def _rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _reference(layers, dense, h, cos, sin, slot):
    """The layers' math in torch; writes each layer's new K/V into (copies of) its caches."""
    residual = torch.zeros_like(h)
    group = HEADS // KV_HEADS
    for layer, (w_qkv, w_o, w_gu, w_down) in zip(layers, dense, strict=True):
        residual = residual + h
        qkv = _rms_norm(residual, layer.input_norm) @ w_qkv.T
        q, k, v = qkv.view(-1, HEAD_DIM).split([HEADS, KV_HEADS, KV_HEADS])
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k_cache, v_cache = layer.k_cache.flatten(0, 1), layer.v_cache.flatten(0, 1)
        k_cache[slot], v_cache[slot] = k, v
        slots = [TABLE[p // BLOCK] * BLOCK + p % BLOCK for p in range(CONTEXT)]
        keys = k_cache[slots].repeat_interleave(group, 1)  # [context, heads, dim]
        values = v_cache[slots].repeat_interleave(group, 1)
        probs = torch.softmax(torch.einsum("hd,thd->ht", q, keys) * SCALE, dim=-1)
        h = torch.einsum("ht,thd->hd", probs, values).reshape(1, -1) @ w_o.T
        residual = residual + h
        gate, up = (_rms_norm(residual, layer.post_norm) @ w_gu.T).chunk(2, dim=-1)
        h = (F.silu(gate) * up) @ w_down.T
    return h, residual


@pytest.mark.parametrize("repack", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_layers_in_one_call_equal_their_torch_math(threads, repack):
    gen = torch.Generator().manual_seed(threads)
    kinds = [("Q4_1", "Q4_0", "Q8_0", "Q4_1"), ("f32", "f32", "f32", "f32")]
    built = [_layer(k, gen) for k in kinds]
    layers, dense = [b[0] for b in built], [b[1] for b in built]
    shape = fused_decode.DecoderShape(HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, BLOCK, EPS, SCALE)
    plan = fused_decode.DecodeLayers(shape, layers, repack=repack)
    # The Q4 linears (every row count here a multiple of 16) read the repacked copy on AVX-512.
    repackable = repack and gguf_repack.gemv_available()
    assert plan.num_repacked == (3 if repackable else 0)
    h = torch.randn(1, HIDDEN, generator=gen)
    angles = torch.rand(HEAD_DIM // 2, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2)[None], torch.cat([angles.sin()] * 2)[None]
    slot = TABLE[(CONTEXT - 1) // BLOCK] * BLOCK + (CONTEXT - 1) % BLOCK
    ref_layers = [
        fused_decode.LayerWeights(
            x.input_norm, x.post_norm, x.qkv, x.o, x.gate_up, x.down,
            x.k_cache.clone(), x.v_cache.clone(),
        )
        for x in layers
    ]  # fmt: skip
    expected_h, expected_residual = _reference(ref_layers, dense, h.clone(), cos, sin, slot)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out_h, out_residual = plan(
            h.clone(), cos, sin, torch.tensor([slot]), torch.tensor([TABLE]), CONTEXT
        )
    finally:
        torch.set_num_threads(before)

    torch.testing.assert_close(out_residual, expected_residual, rtol=0, atol=1e-4)
    torch.testing.assert_close(out_h, expected_h, rtol=0, atol=1e-4 * expected_h.abs().max().item())
    for layer, ref in zip(layers, ref_layers, strict=True):  # the new K/V, in their slot only
        torch.testing.assert_close(layer.k_cache, ref.k_cache, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.v_cache, ref.v_cache, rtol=0, atol=1e-5)


def test_supports_only_the_kernels_it_reads():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=gen)
    blocks = torch.from_numpy(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0))
    assert fused_decode.supports_linear(GGUFLinear(blocks, "Q8_0", None))
    assert not fused_decode.supports_linear(GGUFLinear(blocks, "Q8_0", torch.zeros(64)))
    assert not fused_decode.supports_linear(GGUFLinear(blocks, "Q8_0", None, int8_activations=True))
    assert fused_decode.supports_linear(PackedLinear(w, None))
    assert not fused_decode.supports_linear(PackedLinear(w, torch.zeros(64)))
    assert not fused_decode.supports_linear(torch.nn.Linear(64, 64))
