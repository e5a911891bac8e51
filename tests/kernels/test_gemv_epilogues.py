"""Which decode steps run a projection and the op after it in one launch (the engine's dispatch,
backends/cuda/gemv_epilogues.py): chosen at load from timings (injected here), taken only where
chosen, and computing what the separate launches do."""

from __future__ import annotations

import torch

from lmdeploy.kernels.rotary import rotary
from lmdeploy.kernels.silu_and_mul import silu_and_mul

from ._util import DEVICE, cuda_only, one_token_decode_meta

HEADS = (4, 2, 16)
HIDDEN = 64
GEMV_TILES = dict(BLOCK_N=4, BLOCK_K=64, SPLIT_K=1, num_warps=4)


def _epilogues():
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues

    return gemv_epilogues


def _with_gemv(proj, tiles: dict | None = GEMV_TILES, epilogue: bool = True):
    """`proj` as `prepare_linears` leaves it where the GEMV won its shape's timing with `tiles`,
    and (`epilogue`) its one-launch kernel with the same tiles beat the separate launches."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda.linear import DecodeGemv, GemvShape

    torch.manual_seed(0)
    proj = proj.to(DEVICE)
    with torch.no_grad():
        for param in proj.parameters():
            param.normal_(0, HIDDEN**-0.5)
    if tiles is not None:
        proj.method.kernel = DecodeGemv(GemvShape.of(proj.weight, proj.kernel_bias()), tiles)
        if epilogue:
            proj.method.kernel = proj.method.kernel.with_epilogue(tiles)
    return proj


def _qkv(tiles: dict | None = GEMV_TILES, epilogue: bool = True):
    from lmdeploy.adapters.engines.pytorch.layers.linear import QKVParallelLinear

    proj = QKVParallelLinear(HIDDEN, HEADS[2], HEADS[0], HEADS[1], bias=True)
    return _with_gemv(proj, tiles, epilogue)


def _gate_up(tiles: dict | None = GEMV_TILES, sizes=(24, 24), epilogue: bool = True):
    from lmdeploy.adapters.engines.pytorch.layers.linear import MergedColumnParallelLinear

    return _with_gemv(MergedColumnParallelLinear(HIDDEN, list(sizes)), tiles, epilogue)


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
    assert fused(_qkv(epilogue=False)) is None  # the separate launches timed faster
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
    assert fused(_gate_up(epilogue=False), x) is None  # the separate launches timed faster
    assert fused(_gate_up(), _step(2)[0]) is None  # not one row
    hooked = _gate_up()
    hooked.register_forward_pre_hook(lambda module, args: None)
    assert fused(hooked, x) is None
    monkeypatch.setenv("LMDEPLOY_FUSED_GATE_UP_SILU", "0")
    assert fused(_gate_up(), x) is None


def test_a_quantized_projection_takes_the_separate_launches():
    from lmdeploy.adapters.engines.pytorch.layers.linear import MergedColumnParallelLinear
    from lmdeploy.adapters.engines.pytorch.layers.quantization.awq import AWQConfig

    awq = AWQConfig.from_hf({"quant_method": "awq", "bits": 4, "group_size": 32})
    proj = MergedColumnParallelLinear(HIDDEN, [32, 32], quant_config=awq)
    assert not hasattr(proj, "weight") or proj.weight is None
    assert _epilogues().project_silu_and_mul(proj, _step()[0]) is None


# -- the choice at load, from injected timings ----------------------------------------------------
def _timings(separate_us: float, epilogue_us: list[float], calls: list):
    def timer(*args):
        calls.append(args[-1])  # the weights of one shape
        return separate_us, [
            (dict(GEMV_TILES, BLOCK_K=32 * (i + 1)), us) for i, us in enumerate(epilogue_us)
        ]

    return timer


def test_the_faster_epilogue_tiles_are_kept_and_each_shape_is_timed_once():
    qkv, qkv_twin, gate_up = _qkv(epilogue=False), _qkv(epilogue=False), _gate_up(epilogue=False)
    qkv_calls, gate_up_calls = [], []
    _epilogues().choose_epilogues(
        [qkv, qkv_twin, gate_up],
        time_qkv=_timings(10.0, [11.0, 9.5], qkv_calls),
        time_gate_up=_timings(20.0, [20.0], gate_up_calls),
    )
    assert [len(w) for w in qkv_calls] == [2] and [len(w) for w in gate_up_calls] == [1]
    assert qkv.method.kernel.epilogue == dict(GEMV_TILES, BLOCK_K=64)  # the faster of the two
    assert qkv_twin.method.kernel is qkv.method.kernel
    assert gate_up.method.kernel.epilogue is None  # a tie keeps the separate launches


def test_linears_sharing_a_gemv_kernel_keep_their_own_epilogue_choice():
    from lmdeploy.adapters.engines.pytorch.layers.linear import ColumnParallelLinear

    qkv = _qkv(epilogue=False)
    same_shape = ColumnParallelLinear(HIDDEN, qkv.weight.shape[0], bias=True)  # not a q/k/v
    same_shape.method.kernel = shared = qkv.method.kernel
    _epilogues().choose_epilogues([qkv, same_shape], time_qkv=_timings(10.0, [5.0], []))
    assert qkv.method.kernel.epilogue is not None
    assert same_shape.method.kernel is shared and shared.epilogue is None


def test_a_failed_timing_keeps_the_separate_launches(caplog):
    qkv = _qkv(epilogue=False)

    def failing(*args):
        raise RuntimeError("capture failed")

    _epilogues().choose_epilogues([qkv], time_qkv=failing)
    assert qkv.method.kernel.epilogue is None
    assert "separate launches" in caplog.text


@cuda_only
def test_the_timings_at_load_run_on_the_gpu():
    qkv, gate_up = _qkv(), _gate_up()
    for proj in (qkv, gate_up):
        proj.to(torch.bfloat16)
    gemv = GEMV_TILES
    separate, timed = _epilogues().time_qkv_epilogue(HEADS, gemv, [(qkv.weight, qkv.bias)])
    assert separate > 0 and timed and all(us > 0 for _, us in timed)
    assert all(HEADS[2] // 2 % (c["BLOCK_N"] // 2) == 0 for c, _ in timed)
    separate, timed = _epilogues().time_gate_up_epilogue(gemv, [(gate_up.weight, None)])
    assert separate > 0 and timed and all(us > 0 for _, us in timed)


# -- a decoder layer's one-row decode step, through the layers' dispatch ------------------------
def _decoder_layer():
    from lmdeploy.adapters.engines.pytorch.backends.cuda.linear import DecodeGemv, GemvShape
    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
    from lmdeploy.adapters.engines.pytorch.models.llama import LlamaDecoderLayer

    cfg = ModelConfig.from_hf(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": HIDDEN,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS[0],
            "num_key_value_heads": HEADS[1],
            "head_dim": HEADS[2],
            "vocab_size": 128,
            "rms_norm_eps": 1e-6,
        }
    )
    torch.manual_seed(5)
    layer = LlamaDecoderLayer(cfg, 0)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, HIDDEN**-0.5)
    layer.to(DEVICE)
    for proj in (
        layer.self_attn.qkv_proj,
        layer.mlp.gate_up_proj,
    ):  # as the timing would leave them
        gemv = DecodeGemv(GemvShape.of(proj.weight, proj.kernel_bias()), GEMV_TILES)
        proj.method.kernel = gemv.with_epilogue(GEMV_TILES)
    return layer


def _decode_step_inputs():
    gen = torch.Generator().manual_seed(6)
    block_size, context = 4, 10
    h, residual = (torch.randn(1, HIDDEN, generator=gen).to(DEVICE) for _ in range(2))
    angles = torch.rand(1, HEADS[2] // 2, generator=gen) * 6.3
    cos, sin = (torch.cat([f(angles)] * 2, -1).to(DEVICE) for f in (torch.cos, torch.sin))
    cache = torch.randn(4, block_size, HEADS[1], HEADS[2], generator=gen).to(DEVICE)
    meta = one_token_decode_meta([2, 0, 3], context, block_size)  # the new token in block 3
    return h, residual, cos, sin, (cache, cache + 1), meta


def test_a_decoder_layers_one_row_step_takes_both_epilogues_and_gives_the_separate_result(
    monkeypatch,
):
    epilogues = _epilogues()
    calls = []
    for name in ("qkv_rotary_gemv", "gate_up_silu_gemv"):
        kernel = getattr(epilogues, name)
        spy = lambda *a, kernel=kernel, name=name, **k: calls.append(name) or kernel(*a, **k)  # noqa: E731
        monkeypatch.setattr(epilogues, name, spy)
    layer = _decoder_layer()
    h, residual, cos, sin, cache, meta = _decode_step_inputs()
    runs = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("LMDEPLOY_FUSED_QKV_ROTARY", switch)
        monkeypatch.setenv("LMDEPLOY_FUSED_GATE_UP_SILU", switch)
        kv = tuple(c.clone() for c in cache)
        out, new_residual = layer(h.clone(), residual.clone(), cos, sin, kv, meta)
        runs[switch] = (out, new_residual, kv)
    assert calls == ["qkv_rotary_gemv", "gate_up_silu_gemv"]  # the "1" run only
    (out, res, kv), (ref_out, ref_res, ref_kv) = runs["1"], runs["0"]
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(res, ref_res)
    for got, expected in zip(kv, ref_kv, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.equal(kv[0], cache[0])  # the step wrote its key
