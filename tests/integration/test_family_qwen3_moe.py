"""The Qwen3-MoE family on a tiny random checkpoint (a dense layer, then a sparse one): greedy
ids equal transformers', and the experts load from both of their checkpoint layouts."""

from __future__ import annotations

import transformers

from .tiny_models import (
    VOCAB_SIZE,
    family_fixture,
    greedy_ids_match_test,
    stacked_experts_load_test,
)

family = family_fixture(
    transformers.Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=96,
        intermediate_size=192,  # the dense layer's
        moe_intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,  # the router's weights as softmax gives them (Mixtral renormalizes)
        mlp_only_layers=[0],  # layer 0 dense, layer 1 sparse
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
)
test_greedy_ids_match_transformers = greedy_ids_match_test()
test_stacked_experts_load_as_the_saved_per_expert_ones = stacked_experts_load_test()
