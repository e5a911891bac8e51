"""The Mixtral family on a tiny random checkpoint: greedy ids equal transformers', and the
experts load from the per-expert names checkpoints carry and from transformers 5's stacked ones."""

from __future__ import annotations

import pytest
import transformers

from tests.conftest import LONG_TEXT

from .tiny_models import (
    ENGINE_CONFIGS,
    VOCAB_SIZE,
    assert_greedy_ids_match,
    assert_stacked_experts_load_as_saved,
    prompts,
    reference_greedy,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory, hf_tokenizer):
    config = transformers.MixtralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=1024,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    directory = tmp_path_factory.mktemp("tiny-mixtral")
    model = save_tiny_checkpoint(config, directory, hf_tokenizer)
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, model, prompt_ids, reference_greedy(model, prompt_ids)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers(tiny_mixtral, options):
    directory, _, prompt_ids, reference = tiny_mixtral
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)


def test_stacked_experts_load_as_the_saved_per_expert_ones(tiny_mixtral):
    directory, model, _, _ = tiny_mixtral
    assert_stacked_experts_load_as_saved(directory, model)
