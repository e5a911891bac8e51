"""Tiny random checkpoints of any transformers family, and the check every family must pass:
our engine's greedy ids equal `transformers.generate` on the same weights (fp32, CPU).

A family's test module states its configs (transformers' own classes) and takes the shared
shape from here: `family = family_fixture(config, ...)` and
`test_greedy_ids_match_transformers = greedy_ids_match_test()`; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from tests.conftest import LONG_TEXT

# The embedded model's vocabulary: a real tokenizer saved beside the random weights.
VOCAB_SIZE = 49152

# The dense families' shape; each family's test adds what makes it that family.
TINY_SHAPE: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)

# Prompt lengths cross block boundaries (16 and 64) and the chunk size below.
PROMPT_LENGTHS = [1, 9, 17, 40, 65, 130]
MAX_NEW_TOKENS = [12, 20, 8, 16, 24, 10]

ENGINE_CONFIGS = {
    "block16": dict(block_size=16),
    "block64": dict(block_size=64),
    "block16_prefix_cache": dict(block_size=16, enable_prefix_caching=True),
    "chunked_prefill_prefix_cache": dict(
        block_size=16, max_prefill_token_num=48, enable_prefix_caching=True
    ),
}


def tiny_mixtral_config() -> PretrainedConfig:
    """Mixtral with 4 experts, 2 a token: the MoE shape the family and tensor-parallel tests share."""
    from transformers import MixtralConfig

    return MixtralConfig(
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


def tiny_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A random float32 model of `config`. Norm weights are perturbed from one, and biases
    from zero, so that a norm or a bias applied wrongly shows in the ids."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(float(param.mean()), 0.1)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model


def save_tiny_checkpoint(
    config: PretrainedConfig, directory: Path, hf_tokenizer, seed: int = 0
) -> PreTrainedModel:
    """`tiny_model(config)` saved as safetensors with the embedded tokenizer."""
    model = tiny_model(config, seed)
    model.save_pretrained(directory, safe_serialization=True)
    hf_tokenizer.save_pretrained(directory)
    return model


def save_converted_checkpoint(
    config: dict[str, Any], state_dict: dict[str, torch.Tensor], directory: Path, hf_tokenizer
) -> None:
    """A checkpoint of a family transformers has no class for (its weights converted from one
    it has): `config` as config.json, `state_dict` as model.safetensors, and the tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {name: t.detach().contiguous() for name, t in state_dict.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf_tokenizer.save_pretrained(directory)


def prompts(hf_tokenizer, text: str) -> list[list[int]]:
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) >= max(PROMPT_LENGTHS) + 10
    return [ids[i : i + n] for i, n in enumerate(PROMPT_LENGTHS)]


def reference_greedy(model: PreTrainedModel, prompt_ids: list[list[int]]) -> list[list[int]]:
    outputs = []
    with torch.no_grad():
        for ids, n in zip(prompt_ids, MAX_NEW_TOKENS, strict=True):
            generated = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            outputs.append(generated[0, len(ids) :].tolist())
    return outputs


def engine_greedy(
    directory: Path, prompt_ids: list[list[int]], **engine_options
) -> list[list[int]]:
    config = PytorchEngineConfig(session_len=512, **engine_options)
    pipe = pipeline(str(directory), backend_config=config)
    try:
        gen = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in MAX_NEW_TOKENS]
        responses = pipe(prompt_ids, gen_config=gen)
        stats = pipe.service.engine.stats()
    finally:
        pipe.close()
    assert stats.num_free_blocks == stats.num_blocks, "KV blocks leaked"
    return [r.token_ids for r in responses]


def assert_greedy_ids_match(
    directory: Path, reference: list[list[int]], prompt_ids: list[list[int]], **engine_options
) -> None:
    ours = engine_greedy(directory, prompt_ids, **engine_options)
    for i, (got, expected) in enumerate(zip(ours, reference, strict=True)):
        assert got == expected, f"prompt {i} ({len(prompt_ids[i])} tokens) diverged"


def assert_stacked_experts_load_as_saved(directory: Path, model: PreTrainedModel) -> None:
    """transformers 5 holds an MoE's experts stacked (`mlp.experts.gate_up_proj`) and saves
    them per expert; our model loads both into the same parameters."""
    from safetensors.torch import load_file

    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
    from lmdeploy.adapters.engines.pytorch.models.registry import model_class
    from lmdeploy.adapters.engines.pytorch.models.weights import expected_weights, load_weights

    hf_config = json.loads((directory / "config.json").read_text())
    cfg = ModelConfig.from_hf(hf_config)
    saved, stacked = model_class(cfg.architectures)(cfg), model_class(cfg.architectures)(cfg)
    saved_tensors = load_file(directory / "model.safetensors")
    assert any(".experts.0." in name for name in saved_tensors), "expected per-expert names"
    assert load_weights(saved, saved_tensors.items()) == expected_weights(saved)
    in_memory = model.state_dict()
    assert any(name.endswith("experts.gate_up_proj") for name in in_memory)
    assert load_weights(stacked, in_memory.items()) == expected_weights(stacked)
    for (name, a), (_, b) in zip(
        saved.state_dict().items(), stacked.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@dataclass(frozen=True)
class TinyFamily:
    """A saved tiny checkpoint, the transformers model it was saved from, the prompts, and
    transformers' greedy ids for them."""

    directory: Path
    model: PreTrainedModel
    prompt_ids: list[list[int]]
    reference: list[list[int]]


def family_fixture(*configs: PretrainedConfig, ids: list[str] | None = None) -> Callable:
    """A module-scoped fixture (name it `family`) of one `TinyFamily` per config."""

    @pytest.fixture(scope="module", params=configs, ids=ids)
    def family(request, tmp_path_factory, hf_tokenizer) -> TinyFamily:
        config = request.param
        directory = tmp_path_factory.mktemp(f"tiny-{config.model_type}")
        model = save_tiny_checkpoint(config, directory, hf_tokenizer)
        prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
        return TinyFamily(directory, model, prompt_ids, reference_greedy(model, prompt_ids))

    return family


def greedy_ids_match_test() -> Callable:
    """The check every family passes, under each of `ENGINE_CONFIGS`, on the module's
    `family` fixture."""

    @pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
    def test_greedy_ids_match_transformers(family: TinyFamily, options: dict) -> None:
        assert_greedy_ids_match(family.directory, family.reference, family.prompt_ids, **options)

    return test_greedy_ids_match_transformers


def stacked_experts_load_test() -> Callable:
    """`assert_stacked_experts_load_as_saved` on the module's `family` fixture (MoE families)."""

    def test_stacked_experts_load_as_the_saved_per_expert_ones(family: TinyFamily) -> None:
        assert_stacked_experts_load_as_saved(family.directory, family.model)

    return test_stacked_experts_load_as_the_saved_per_expert_ones
