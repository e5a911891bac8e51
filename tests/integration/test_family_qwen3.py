"""The Qwen3 family on a tiny random checkpoint: greedy ids equal transformers'. `head_dim`
(64) is not hidden / heads (32), and the per-head q/k norm weights are random, so a norm
skipped, applied after rotary or over the wrong width shows in the ids."""

from __future__ import annotations

import pytest
import transformers

from tests.conftest import LONG_TEXT

from .tiny_models import (
    ENGINE_CONFIGS,
    VOCAB_SIZE,
    assert_greedy_ids_match,
    prompts,
    reference_greedy,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory, hf_tokenizer):
    config = transformers.Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    directory = tmp_path_factory.mktemp("tiny-qwen3")
    model = save_tiny_checkpoint(config, directory, hf_tokenizer)
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, prompt_ids, reference_greedy(model, prompt_ids)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers(tiny_qwen3, options):
    directory, prompt_ids, reference = tiny_qwen3
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)
