"""The Llama family on a tiny random checkpoint: greedy ids equal transformers'."""

from __future__ import annotations

import transformers

from .tiny_models import TINY_SHAPE, family_fixture, greedy_ids_match_test

family = family_fixture(
    transformers.LlamaConfig(
        **TINY_SHAPE,
        tie_word_embeddings=False,
    )
)
test_greedy_ids_match_transformers = greedy_ids_match_test()
