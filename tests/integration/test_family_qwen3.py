"""The Qwen3 family on a tiny random checkpoint: greedy ids equal transformers'. `head_dim`
(64) is not hidden / heads (32), and the per-head q/k norm weights are random, so a norm
skipped, applied after rotary or over the wrong width shows in the ids."""

from __future__ import annotations

import transformers

from .tiny_models import TINY_SHAPE, family_fixture, greedy_ids_match_test

family = family_fixture(
    transformers.Qwen3Config(
        **TINY_SHAPE,
        head_dim=64,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
)
test_greedy_ids_match_transformers = greedy_ids_match_test()
