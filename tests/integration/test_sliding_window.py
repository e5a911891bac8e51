"""Mistral's sliding-window attention: past the window, and where it never slides, our logits
are transformers' (the greedy ids over prompts and generations crossing it:
test_family_mistral.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.infrastructure.devices import platform_for

from .test_loaders import CPU_CONFIG, TOKEN_IDS, assert_logits_close, last_logits

MAX_POSITIONS = 128


def write_tiny_mistral(directory: Path, sliding_window: int | None) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=sliding_window,
    )
    model = transformers.MistralForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


# 43 tokens: the last sees only the 16 before it and itself, across three 16-token blocks.
LONG_TOKEN_IDS = list(range(1, 300, 7))


def test_a_window_shorter_than_the_prompt_slides_as_in_transformers(tmp_path):
    reference = write_tiny_mistral(tmp_path, sliding_window=16)
    built = build(
        resolve(str(tmp_path)),
        PytorchEngineConfig(**CPU_CONFIG),
        platform_for(PytorchEngineConfig(**CPU_CONFIG)),
    )
    with torch.inference_mode():
        theirs = reference(torch.tensor([LONG_TOKEN_IDS])).logits[0, -1:]
        unwindowed = write_tiny_mistral(tmp_path / "full", sliding_window=None)
        full = unwindowed(torch.tensor([LONG_TOKEN_IDS])).logits[0, -1:]
    assert not torch.allclose(full, theirs, atol=1e-3), "the window must change these logits"
    assert_logits_close(last_logits(built.runner, LONG_TOKEN_IDS), theirs)


@pytest.mark.parametrize(
    ("sliding_window", "session_len"), [(None, None), (16, 16), (MAX_POSITIONS, None)]
)
def test_a_window_that_never_slides_runs_as_transformers(tmp_path, sliding_window, session_len):
    reference = write_tiny_mistral(tmp_path, sliding_window)
    config = PytorchEngineConfig(session_len=session_len, **CPU_CONFIG)
    built = build(resolve(str(tmp_path)), config, platform_for(config))
    with torch.inference_mode():
        theirs = reference(torch.tensor([TOKEN_IDS])).logits[0, -1:]
    assert_logits_close(last_logits(built.runner, TOKEN_IDS), theirs)
