"""Dynamic NTK rope past max_position_embeddings: greedy ids equal transformers' (fp32, CPU).

A random Llama trained for 64 positions; prompts and outputs cross that length, so the base
changes between prefill and decode. Reached two documented ways: the model's own HF config
(`rope_scaling: {"rope_type": "dynamic", "factor": 2}`) and TurbomindEngineConfig's
`rope_scaling_factor` on a model without it. transformers keeps the grown base between
`generate` calls, so its reference is a fresh model per prompt (batch 1, as its dynamic rope
takes the batch's longest sequence while ours takes each sequence's own length).
"""

from __future__ import annotations

import pytest
import torch

from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig, pipeline

MAX_POSITIONS = 64
FACTOR = 2.0
PROMPT_LENS = [3, 40, 63, 64, 100]
MAX_NEW_TOKENS = 40


def _config(dynamic: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        rope_scaling={"rope_type": "dynamic", "factor": FACTOR} if dynamic else None,
        initializer_range=0.2,  # decisive logits: an argmax tie would not test the rope
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same random weights saved twice: with dynamic rope in config.json, and without."""
    from transformers import LlamaForCausalLM

    from .test_cuda_engine import _word_level_tokenizer

    torch.manual_seed(0)
    state = LlamaForCausalLM(_config(dynamic=False)).state_dict()
    paths = {}
    for dynamic in (True, False):
        model = LlamaForCausalLM(_config(dynamic))
        model.load_state_dict(state)
        path = tmp_path_factory.mktemp("dynamic" if dynamic else "plain")
        model.save_pretrained(path)
        _word_level_tokenizer(512).save_pretrained(path)
        paths[dynamic] = path
    return paths


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(5, 512, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def _transformers(path) -> list[list[int]]:
    from transformers import LlamaForCausalLM

    outputs = []
    for prompt in _prompts():
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # fresh base
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=MAX_NEW_TOKENS,
                # ignore_eos bans eos (as 0.6.5); min_new_tokens does that in transformers.
                min_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


def _ours(path, backend_config) -> list[list[int]]:
    pipe = pipeline(str(path), backend_config=backend_config)
    try:
        gen = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
        return [r.token_ids for r in pipe(_prompts(), gen_config=gen)]
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def reference(checkpoints):
    dynamic = _transformers(checkpoints[True])
    plain = _transformers(checkpoints[False])
    # Guard: past 64 positions the scaling must change the greedy ids, or this test could not fail.
    assert dynamic != plain
    return dynamic


COMMON = dict(device_type="cpu", dtype="float32", session_len=256, cache_max_entry_count=0.05)


def test_hf_dynamic_rope_scaling_matches_transformers(checkpoints, reference):
    ours = _ours(checkpoints[True], PytorchEngineConfig(block_size=16, **COMMON))
    assert ours == reference


def test_turbomind_rope_scaling_factor_matches_transformers(checkpoints, reference):
    config = TurbomindEngineConfig(
        rope_scaling_factor=FACTOR,
        cache_block_seq_len=16,
        **{k: v for k, v in COMMON.items() if k != "device_type"},
    )
    ours = _ours(checkpoints[False], config)
    assert ours == reference


@pytest.mark.parametrize("factor", [-1.0, 0.5])
def test_rope_scaling_factor_below_one_is_rejected(factor):

    with pytest.raises(ValueError, match="rope_scaling_factor"):  # pydantic, as 0.6.5
        TurbomindEngineConfig(rope_scaling_factor=factor)
