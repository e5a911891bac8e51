"""The shipped dummy shapes are the published models': transformers builds each from our
config.json with the parameter count its model card states, and our config reads it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lmdeploy.adapters.engines.pytorch.builder import read_model_config
from lmdeploy.adapters.loaders import dummy
from lmdeploy.adapters.loaders.model_source import resolve

# name -> (hub id, parameters as published)
PUBLISHED = {
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 7_615_616_512),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", 7_241_732_096),
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B", 30_532_122_624),
    "mixtral-8x7b": ("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_shipped_shape_has_the_published_parameter_count(name):
    raw = dict(dummy.shipped_config(name))
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device("meta"):  # shapes only
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name][1]


@pytest.mark.parametrize("name", [n for pair in PUBLISHED.items() for n in (pair[0], pair[1][0])])
def test_shipped_shape_resolves_by_name_and_hub_id(name):
    source = resolve(name, "dummy")
    config, weights = read_model_config(source)
    assert source.path is None and weights is None
    assert config.architectures[0] == dummy.shipped_config(name)["architectures"][0]


def test_window_and_experts_are_as_published():
    mistral, _ = read_model_config(resolve("mistral-7b", "dummy"))
    qwen, _ = read_model_config(resolve("qwen2.5-7b", "dummy"))
    assert (mistral.sliding_window, qwen.sliding_window) == (4096, None)  # Qwen2.5: window off
    moe = dummy.shipped_config("qwen3-30b-a3b")
    assert (moe["num_experts"], moe["num_experts_per_tok"], moe["moe_intermediate_size"]) == (
        128,
        8,
        768,
    )
    mixtral = dummy.shipped_config("mixtral-8x7b")
    assert (mixtral["num_local_experts"], mixtral["num_experts_per_tok"]) == (8, 2)
