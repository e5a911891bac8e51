"""The Gemma 2 family on a tiny random checkpoint: greedy ids equal transformers', and so do
the logits (the final soft cap changes them, never the argmax).

Four layers, so both of transformers' `layer_types` run (windowed, global, windowed, global),
with a 24-token window shorter than most prompts and generations. The head dimension, the
attention scale (`query_pre_attn_scalar`) and the hidden size all differ, so that each is
taken from its own field; the soft caps are low and the weights larger than transformers'
default so that the caps bite."""

from __future__ import annotations

import torch
import transformers

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.infrastructure.devices import platform_for

from .test_loaders import assert_logits_close, last_logits
from .tiny_models import VOCAB_SIZE, TinyFamily, family_fixture, greedy_ids_match_test


def tiny_gemma2_config() -> transformers.Gemma2Config:
    return transformers.Gemma2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        query_pre_attn_scalar=24,
        sliding_window=24,
        attn_logit_softcapping=1.0,
        final_logit_softcapping=5.0,
        max_position_embeddings=1024,
        initializer_range=0.05,
    )


family = family_fixture(tiny_gemma2_config())
test_greedy_ids_match_transformers = greedy_ids_match_test()


def test_reference_runs_both_layer_types(family: TinyFamily):
    """transformers' default attention for Gemma 2 (eager) applies the window and the cap."""
    assert set(family.model.config.layer_types) == {"sliding_attention", "full_attention"}
    assert family.model.config._attn_implementation in ("eager", "sdpa")


def test_soft_capped_logits_match_transformers(family: TinyFamily):
    ids = family.prompt_ids[3]  # 40 tokens: past the window
    config = PytorchEngineConfig(device_type="cpu", dtype="float32", num_gpu_blocks=4)
    built = build(resolve(str(family.directory)), config, platform_for(config))
    with torch.inference_mode():
        theirs = family.model(torch.tensor([ids])).logits[0, -1:]
    assert theirs.abs().max() < 5.0, "the final soft cap bounds the logits"
    assert_logits_close(last_logits(built.runner, ids), theirs)
