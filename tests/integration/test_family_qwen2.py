"""The Qwen2 family on tiny random checkpoints, untied and tied LM head (Qwen2.5's small
models tie it): greedy ids equal transformers'. The q/k/v biases are random, so a bias
dropped or misplaced shows in the ids. GGUF files of llama.cpp's 'qwen2' architecture load
to the weights and logits transformers reads from the same file."""

from __future__ import annotations

import gguf
import pytest
import transformers

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.engines.pytorch.models.qwen2 import Qwen2ForCausalLM
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.infrastructure.devices import platform_for

from ._gguf_fixtures import write_tiny_gguf
from .test_loaders import (
    CPU_CONFIG,
    TOKEN_IDS,
    assert_logits_close,
    assert_same_weights,
    last_logits,
    load_reference,
    reference_logits,
)
from .tiny_models import TINY_SHAPE, TinyFamily, family_fixture, greedy_ids_match_test


def qwen2_config(tied: bool) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        **TINY_SHAPE,
        tie_word_embeddings=tied,
        use_sliding_window=False,
    )


family = family_fixture(qwen2_config(False), qwen2_config(True), ids=["untied", "tied"])
test_greedy_ids_match_transformers = greedy_ids_match_test()


def test_reference_qkv_biases_are_random(family: TinyFamily):
    assert family.model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0


@pytest.mark.parametrize("type_name", ["F32", "Q8_0"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gguf_logits_match_transformers(tmp_path, type_name, tied):
    path = tmp_path / "tiny-qwen2.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType[type_name], with_output=not tied, arch="qwen2")
    built = build(
        resolve(str(tmp_path)),
        PytorchEngineConfig(**CPU_CONFIG),
        platform_for(PytorchEngineConfig(**CPU_CONFIG)),
    )
    assert isinstance(built.runner.model, Qwen2ForCausalLM)
    assert built.config.tie_word_embeddings is tied
    reference = load_reference(tmp_path, path.name)
    assert_same_weights(built.runner.model, reference)
    ours = last_logits(built.runner, TOKEN_IDS)
    assert_logits_close(ours, reference_logits(reference, TOKEN_IDS))
