"""The RMSNorms of a one-row step run inside the GEMVs around them (`layers/norm.py`'s
`link_norms`): the linear before a norm adds the residual in its epilogue, the projection after
it, its weight holding the norm's, normalises in its K loop. For each family's layer layout, a
model's one-row decode step with the norms linked gives the step without them (Triton under the
interpreter on a CPU), linking only where the layout allows it and the timing at load (injected
here) found it faster, and taking every link it made."""

from __future__ import annotations

import pytest
import torch

from ._util import DEVICE, cuda_only, one_token_decode_meta

GEMV_TILES = dict(BLOCK_N=4, BLOCK_K=32, SPLIT_K=1, num_warps=4)
SHAPE = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
)
# architecture -> (extra config, modules linked in the model, GEMVs a step that take a norm or
# a residual add): two layers, two norms and two residual adds each, as the layout allows.
FAMILIES = {
    "LlamaForCausalLM": ({}, 8, 8),
    "Qwen2ForCausalLM": ({"model_type": "qwen2"}, 8, 8),
    # q/k norms between q/k/v and attention: its input norm still feeds q/k/v alone.
    "Qwen3ForCausalLM": ({"model_type": "qwen3", "head_dim": 16}, 8, 8),
    # The MoE block reads the post-attention norm: not linked; the o projection's add is (its
    # norm then runs alone, as before), and the input norm, whose add only the first layer
    # (without one) skips.
    "MixtralForCausalLM": (
        {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
        4,
        3,
    ),  # fmt: skip
    "InternLM2ForCausalLM": ({"model_type": "internlm2", "bias": False}, 8, 8),
    "Gemma2ForCausalLM": (
        {
            "model_type": "gemma2",
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
        },
        0,
        0,
    ),  # fmt: skip
}


def _model(arch: str, extra: dict, epilogues: bool = False):
    from lmdeploy.adapters.engines.pytorch.backends.cuda.linear import DecodeGemv, GemvShape
    from lmdeploy.adapters.engines.pytorch.layers.linear import LinearBase
    from lmdeploy.adapters.engines.pytorch.layers.quantization import UnquantizedLinearMethod
    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
    from lmdeploy.adapters.engines.pytorch.models.registry import model_class

    cfg = ModelConfig.from_hf({"architectures": [arch], "model_type": "llama", **SHAPE, **extra})
    torch.manual_seed(1)
    model = model_class(cfg.architectures)(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.uniform_(0.5, 1.5)  # a norm weight that is not all ones
            else:
                param.normal_(0, SHAPE["hidden_size"] ** -0.5)
    model.to(DEVICE).eval()
    for module in model.modules():  # as the timing at load leaves a decode GEMV that won
        if isinstance(module, LinearBase) and isinstance(module.method, UnquantizedLinearMethod):
            shape = GemvShape.of(module.weight, module.kernel_bias())
            module.method.kernel = DecodeGemv(shape, GEMV_TILES)
    if epilogues:  # q/k/v with rotary, gate/up with SiLU: as where they timed faster
        for name, module in model.named_modules():
            if name.endswith(("qkv_proj", "gate_up_proj")):
                module.method.kernel = module.method.kernel.with_epilogue(GEMV_TILES)
    return cfg, model


def _decode_step(cfg):
    gen = torch.Generator().manual_seed(2)
    block_size, context = 4, 7
    dim = cfg.head_dim
    angles = torch.rand(1, dim // 2, generator=gen) * 6.3
    cos, sin = (torch.cat([f(angles)] * 2, -1).to(DEVICE) for f in (torch.cos, torch.sin))
    caches = [
        (cache, cache + 1)
        for cache in (
            torch.randn(3, block_size, cfg.num_key_value_heads, dim, generator=gen).to(DEVICE)
            for _ in range(cfg.num_hidden_layers)
        )
    ]
    meta = one_token_decode_meta([1, 2], context, block_size)
    return torch.tensor([5], device=DEVICE), cos, sin, caches, meta


@pytest.fixture(autouse=True)
def _links_time_faster(monkeypatch):
    """The load-time timing, as where the norm in the K loop wins: 1 us against 2."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues

    monkeypatch.delenv("LMDEPLOY_FUSED_NORM", raising=False)
    monkeypatch.setattr(
        gemv_epilogues, "time_norm_link", lambda proj, eps, weights, producer: (2.0, 1.0)
    )


def _run(model, step):
    ids, cos, sin, caches, meta = step
    kv = [tuple(c.clone() for c in layer) for layer in caches]
    with torch.inference_mode():
        return model(ids, cos, sin, kv, meta), kv


@pytest.mark.parametrize(
    ("arch", "epilogues"),
    [(arch, False) for arch in FAMILIES] + [("LlamaForCausalLM", True), ("Qwen3ForCausalLM", True)],
)
def test_a_one_row_step_with_linked_norms_gives_the_step_without(arch, epilogues, monkeypatch):
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms

    extra, links, fused_launches = FAMILIES[arch]
    cfg, model = _model(arch, extra, epilogues)
    step = _decode_step(cfg)
    expected, expected_kv = _run(model, step)

    fused = []  # the GEMV launches that took a norm or a residual add
    for name in ("dense_gemv", "qkv_rotary_gemv", "gate_up_silu_gemv"):
        kernel = getattr(gemv_epilogues, name)

        def spy(*args, kernel=kernel, **kwargs):
            fused.extend(key for key in ("rms_eps", "residual") if kwargs.get(key) is not None)
            return kernel(*args, **kwargs)

        monkeypatch.setattr(gemv_epilogues, name, spy)
    linked = link_norms(model)
    assert len(linked) == links
    got, got_kv = _run(model, step)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for layer, expected_layer in zip(got_kv, expected_kv, strict=True):
        for cache, expected_cache in zip(layer, expected_layer, strict=True):
            torch.testing.assert_close(cache, expected_cache, atol=1e-5, rtol=1e-5)
    assert len(fused) == fused_launches


def test_with_a_quantized_kv_cache_q_k_v_takes_its_linked_norm_in_the_plain_gemv(monkeypatch):
    """The q/k/v epilogue writes an unquantized cache only: with an int8 cache the reader's norm
    runs in the plain GEMV's K loop, and the step is still the unlinked one."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms
    from lmdeploy.adapters.engines.pytorch.runner.kv_cache import allocate_kv_caches

    cfg, model = _model("LlamaForCausalLM", {}, epilogues=True)
    ids, cos, sin, _, meta = _decode_step(cfg)
    caches = allocate_kv_caches(
        cfg.num_hidden_layers, 3, 4, cfg.num_key_value_heads, cfg.head_dim,
        torch.float32, DEVICE, quant_policy=8,
    )  # fmt: skip
    step = (ids, cos, sin, caches, meta)
    expected, _ = _run(model, step)
    normed = []
    gemv = gemv_epilogues.dense_gemv

    def spy(*args, **kwargs):
        normed.append(kwargs.get("rms_eps") is not None)
        return gemv(*args, **kwargs)

    monkeypatch.setattr(gemv_epilogues, "dense_gemv", spy)
    link_norms(model)
    got, _ = _run(model, step)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sum(normed) == cfg.num_hidden_layers  # each layer's q/k/v, its norm in the K loop


def test_nothing_is_linked_with_the_switch_off_or_where_lora_hooks_the_reader(monkeypatch):
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms

    monkeypatch.setenv("LMDEPLOY_FUSED_NORM", "0")
    assert link_norms(_model("LlamaForCausalLM", {})[1]) == []
    monkeypatch.delenv("LMDEPLOY_FUSED_NORM")
    _, model = _model("LlamaForCausalLM", {})
    model.model.layers[0].self_attn.qkv_proj.register_forward_pre_hook(lambda m, args: None)
    linked = link_norms(model)
    assert "model.layers.0.input_layernorm" not in linked
    assert "model.layers.1.input_layernorm" in linked


def test_a_producer_hooked_after_linking_runs_unfused_and_its_hook_sees_a_tensor():
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms

    cfg, model = _model("LlamaForCausalLM", {})
    step = _decode_step(cfg)
    expected, _ = _run(model, step)
    link_norms(model)
    seen = []
    down = model.model.layers[1].mlp.down_proj
    down.register_forward_hook(lambda m, args, out: seen.append(type(out)))
    got, _ = _run(model, step)
    assert seen == [torch.Tensor]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_norms_link_only_where_timed_no_slower_and_each_chain_is_timed_once(monkeypatch):
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms

    timed = []

    def timing(proj, eps, weights, producer):
        timed.append((len(weights), producer is layer.self_attn.o_proj))
        # gate/up's chain ties within the tolerance (a link), q/k/v's is slower (none)
        return (2.0, 2.01) if proj.weight.shape[0] == 2 * SHAPE["intermediate_size"] else (1.0, 1.1)

    monkeypatch.setattr(gemv_epilogues, "time_norm_link", timing)
    cfg, model = _model("LlamaForCausalLM", {})
    layer = model.model.layers[0]
    step = _decode_step(cfg)
    expected, _ = _run(model, step)
    linked = link_norms(model)
    # Each shape's chain once, over both layers' weights; gate/up's after the o projection.
    assert sorted(timed) == [(2, False), (2, True)]
    assert [n for n in linked if n.endswith("norm")] == [
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.post_attention_layernorm",
    ]
    assert not torch.all(layer.input_layernorm.weight == 1)  # not linked: not folded
    assert torch.all(layer.post_attention_layernorm.weight == 1)  # folded into gate/up
    got, _ = _run(model, step)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_failed_timing_links_no_norm(monkeypatch, caplog):
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues
    from lmdeploy.adapters.engines.pytorch.layers.norm import link_norms

    def failing(proj, eps, weights, producer):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(gemv_epilogues, "time_norm_link", failing)
    linked = link_norms(_model("LlamaForCausalLM", {})[1])
    assert not any(name.endswith("norm") for name in linked)
    assert "norms run alone" in caplog.text


@cuda_only
def test_the_timing_at_load_runs_on_the_gpu_for_each_kind_of_reader():
    from lmdeploy.adapters.engines.pytorch.backends.cuda import gemv_epilogues

    _, model = _model("LlamaForCausalLM", {}, epilogues=True)
    model.to(torch.bfloat16)
    layer = model.model.layers[0]
    plain = model.model.layers[1].self_attn.qkv_proj
    plain.method.kernel.epilogue = None  # its GEMV alone
    chains = [
        (layer.self_attn.qkv_proj, layer.mlp.down_proj),
        (layer.mlp.gate_up_proj, layer.self_attn.o_proj),
        (plain, None),
    ]
    for reader, producer in chains:
        weights = [(reader.weight, reader.kernel_bias())]
        separate, fused = gemv_epilogues.time_norm_link(reader, 1e-6, weights, producer)
        assert separate > 0 and fused > 0
