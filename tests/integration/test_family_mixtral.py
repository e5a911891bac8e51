"""The Mixtral family on a tiny random checkpoint (every layer sparse, renormalized top-k):
greedy ids equal transformers', and the experts load from both of their checkpoint layouts."""

from __future__ import annotations

import transformers

from .tiny_models import (
    VOCAB_SIZE,
    family_fixture,
    greedy_ids_match_test,
    stacked_experts_load_test,
)

family = family_fixture(
    transformers.MixtralConfig(
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
)
test_greedy_ids_match_transformers = greedy_ids_match_test()
test_stacked_experts_load_as_the_saved_per_expert_ones = stacked_experts_load_test()
