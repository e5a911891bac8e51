"""The Mistral family on a tiny random checkpoint whose sliding window (24 tokens) is shorter
than most prompts and generations, so that decode, prefill and chunks that start mid-sequence
all attend across it: greedy ids equal transformers'."""

from __future__ import annotations

import transformers

from .tiny_models import TINY_SHAPE, TinyFamily, family_fixture, greedy_ids_match_test

SLIDING_WINDOW = 24

family = family_fixture(
    transformers.MistralConfig(
        **TINY_SHAPE,
        sliding_window=SLIDING_WINDOW,
        tie_word_embeddings=False,
    )
)
test_greedy_ids_match_transformers = greedy_ids_match_test()


def test_reference_attention_is_windowed(family: TinyFamily):
    """transformers' default (sdpa) attention applies the window: its reference is windowed."""
    assert family.model.config._attn_implementation in ("sdpa", "eager")
