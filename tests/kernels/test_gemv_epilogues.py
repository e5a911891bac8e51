"""Which decode steps run a projection and the op after it in one launch (the engine's dispatch,
backends/cuda/gemv_epilogues.py), and that what they compute is what the separate launches do."""

from __future__ import annotations

import torch

from lmdeploy.kernels.rotary import rotary
from lmdeploy.kernels.silu_and_mul import silu_and_mul

from ._util import DEVICE

HEADS = (4, 2, 16)
HIDDEN = 64
GEMV_TILES = dict(BLOCK_N=4, BLOCK_K=64, SPLIT_K=1, num_warps=4)


def _epilogues():
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues

    return gemv_epilogues


def _with_gemv(proj, tiles: dict | None = GEMV_TILES):
    """`proj` as `prepare_linears` leaves it where the GEMV won its shape's timing with `tiles`."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda.linear import DecodeGemv, GemvShape

    torch.manual_seed(0)
    proj = proj.to(DEVICE)
    with torch.no_grad():
        for param in proj.parameters():
            param.normal_(0, HIDDEN**-0.5)
    if tiles is not None:
        proj.method.kernel = DecodeGemv(GemvShape.of(proj.weight, proj.kernel_bias()), tiles)
    return proj


def _qkv(tiles: dict | None = GEMV_TILES):
    from lmdeploy.adapters.engines.pytorch.layers.linear import QKVParallelLinear

    return _with_gemv(QKVParallelLinear(HIDDEN, HEADS[2], HEADS[0], HEADS[1], bias=True), tiles)


def _gate_up(tiles: dict | None = GEMV_TILES, sizes=(24, 24)):
    from lmdeploy.adapters.engines.pytorch.layers.linear import MergedColumnParallelLinear

    return _with_gemv(MergedColumnParallelLinear(HIDDEN, list(sizes)), tiles)


def _step(tokens: int = 1):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, HIDDEN, generator=gen).to(DEVICE)
    angles = torch.rand(tokens, HEADS[2] // 2, generator=gen) * 6.3
    cos, sin = (torch.cat([f(angles)] * 2, -1).to(DEVICE) for f in (torch.cos, torch.sin))
    cache = torch.randn(5, 4, HEADS[1], HEADS[2], generator=gen).to(DEVICE)
    slots = torch.tensor([7, -1, 3, 11][:tokens], device=DEVICE)
    return x, cos, sin, (cache, cache + 1), slots


def test_qkv_rotary_in_one_launch_equals_the_separate_launches(monkeypatch):
    monkeypatch.delenv("LMDEPLOY_FUSED_QKV_ROTARY", raising=False)
    proj = _qkv()
    x, cos, sin, (k_cache, v_cache), slots = _step()
    fused_k, fused_v = k_cache.clone(), v_cache.clone()
    q = _epilogues().project_rotate_write(proj, x, cos, sin, (fused_k, fused_v), slots, HEADS)
    assert q is not None

    qkv = proj(x).view(1, -1, HEADS[2])
    q_ref, k_new, v_new = qkv.split([HEADS[0], HEADS[1], HEADS[1]], dim=1)
    rotary(q_ref, k_new, cos, sin, inplace=True, kv_write=(v_new, k_cache, v_cache, slots))
    assert torch.equal(q, q_ref)
    assert torch.equal(fused_k, k_cache) and torch.equal(fused_v, v_cache)


def test_qkv_rotary_steps_that_take_the_separate_launches(monkeypatch):
    monkeypatch.delenv("LMDEPLOY_FUSED_QKV_ROTARY", raising=False)
    x, cos, sin, cache, slots = _step()

    def fused(proj=None, x=x, cache=cache, cos=cos, sin=sin, slots=slots):
        proj = proj if proj is not None else _qkv()
        return _epilogues().project_rotate_write(proj, x, cos, sin, cache, slots, HEADS)

    assert fused() is not None
    assert fused(_qkv(tiles=None)) is None  # cuBLAS won the shape
    assert fused(_qkv(tiles=dict(GEMV_TILES, SPLIT_K=2))) is None  # a K split
    assert fused(_qkv(tiles=dict(GEMV_TILES, BLOCK_N=32))) is None  # a tile across two heads
    two = _step(2)
    assert fused(x=two[0], cos=two[1], sin=two[2], slots=two[4]) is None  # not one row
    hooked = _qkv()
    hooked.register_forward_hook(lambda module, args, out: out)  # as LoRA's adapters
    assert fused(hooked) is None
    codes = cache[0].to(torch.uint8)
    assert fused(cache=(codes, codes, cache[0], cache[1])) is None  # a quantized cache
    monkeypatch.setenv("LMDEPLOY_FUSED_QKV_ROTARY", "0")
    assert fused() is None


def test_gate_up_silu_in_one_launch_equals_the_separate_launches(monkeypatch):
    monkeypatch.delenv("LMDEPLOY_FUSED_GATE_UP_SILU", raising=False)
    proj, x = _gate_up(), _step()[0]
    out = _epilogues().project_silu_and_mul(proj, x)
    assert out is not None and out.shape == (1, 24)
    assert torch.equal(out, silu_and_mul(proj(x)))


def test_gate_up_silu_steps_that_take_the_separate_launches(monkeypatch):
    monkeypatch.delenv("LMDEPLOY_FUSED_GATE_UP_SILU", raising=False)
    x = _step()[0]
    fused = _epilogues().project_silu_and_mul

    assert fused(_gate_up(), x) is not None
    assert fused(_gate_up(tiles=None), x) is None  # cuBLAS won the shape
    assert fused(_gate_up(tiles=dict(GEMV_TILES, SPLIT_K=3)), x) is None  # a K split
    assert fused(_gate_up(tiles=dict(GEMV_TILES, BLOCK_N=16), sizes=(20, 20)), x) is None
    assert fused(_gate_up(sizes=(16, 32)), x) is None  # not [gate; up] of one width
    assert fused(_gate_up(), _step(2)[0]) is None  # not one row
    hooked = _gate_up()
    hooked.register_forward_pre_hook(lambda module, args: None)
    assert fused(hooked, x) is None
    monkeypatch.setenv("LMDEPLOY_FUSED_GATE_UP_SILU", "0")
    assert fused(_gate_up(), x) is None
