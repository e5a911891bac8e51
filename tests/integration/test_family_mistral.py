"""The Mistral family on a tiny random checkpoint whose sliding window (24 tokens) is shorter
than most prompts and generations, so that decode, prefill and chunks that start mid-sequence
all attend across it: greedy ids equal transformers'."""

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

SLIDING_WINDOW = 24


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory, hf_tokenizer):
    config = transformers.MistralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        sliding_window=SLIDING_WINDOW,
        tie_word_embeddings=False,
    )
    directory = tmp_path_factory.mktemp("tiny-mistral")
    model = save_tiny_checkpoint(config, directory, hf_tokenizer)
    # transformers' default (sdpa) attention applies the window: its reference is windowed.
    assert model.config._attn_implementation in ("sdpa", "eager")
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, prompt_ids, reference_greedy(model, prompt_ids)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers(tiny_mistral, options):
    directory, prompt_ids, reference = tiny_mistral
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)
