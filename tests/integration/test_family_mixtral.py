"""The Mixtral family on a tiny random checkpoint (every layer sparse, renormalized top-k):
greedy ids equal transformers', and the experts load from both of their checkpoint layouts."""

from __future__ import annotations

from .tiny_models import (
    family_fixture,
    greedy_ids_match_test,
    stacked_experts_load_test,
    tiny_mixtral_config,
)

family = family_fixture(tiny_mixtral_config())
test_greedy_ids_match_transformers = greedy_ids_match_test()
test_stacked_experts_load_as_the_saved_per_expert_ones = stacked_experts_load_test()
