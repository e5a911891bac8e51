"""SmoothQuant's migration keeps the float model's function: the logits of a tiny Llama and a
tiny Qwen2 (biases) are the same before and after `smooth`, with v_proj -> o_proj skipped
(Llama's grouped-query attention) or migrated (Qwen2 with full multi-head attention), and the inputs of the
linears come out flatter across channels, which is what makes them quantizable."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmdeploy.adapters.quantization.w8a8_model import TorchSmoothQuantModel

from .tiny_models import TINY_SHAPE, save_tiny_checkpoint

CASES = {
    "llama_gqa": (transformers.LlamaConfig, {}),
    "qwen2_mha": (transformers.Qwen2Config, dict(num_key_value_heads=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_smoothing_keeps_the_logits_and_flattens_the_activations(case, tmp_path, hf_tokenizer):
    config_cls, extra = CASES[case]
    config = config_cls(
        **{**TINY_SHAPE, **extra, "architectures": [config_cls.__name__[:-6] + "ForCausalLM"]}
    )
    save_tiny_checkpoint(config, tmp_path, hf_tokenizer)
    opened = TorchSmoothQuantModel.open(str(tmp_path), "float32", "cpu")
    model = opened.model
    with torch.no_grad():
        # Outlier channels, as real models have them: what smoothing exists for.
        model.model.layers[0].input_layernorm.weight[:3] *= 40
    ids = torch.randint(100, 40000, (2, 24), generator=torch.Generator().manual_seed(0))
    opened.observe(ids.tolist())
    before = model(ids).logits
    ratio_before = _max_over_mean(opened.act_amax["model.layers.0.self_attn.q_proj"])
    opened.smooth(0.5)
    torch.testing.assert_close(model(ids).logits, before, atol=2e-4, rtol=1e-4)
    opened.act_amax.clear()
    opened.observe(ids.tolist())
    assert _max_over_mean(opened.act_amax["model.layers.0.self_attn.q_proj"]) < ratio_before / 3


def _max_over_mean(amax: torch.Tensor) -> float:
    return float(amax.max() / amax.mean())


@pytest.mark.parametrize(
    "config, match",
    [
        (
            {"architectures": ["Phi3ForCausalLM"]},
            "Phi3ForCausalLM cannot be quantised.*LlamaForCausalLM",
        ),
        (
            {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "awq"}},
            "already quantised; pass its float checkpoint",
        ),
    ],
)
def test_models_calibration_cannot_run_are_refused_by_name(tmp_path, config, match):
    import json

    from lmdeploy.domain.errors import InvalidArgument

    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match=match):
        TorchSmoothQuantModel.open(str(tmp_path), "float32", "cpu")
