"""Mistral's sliding-window attention is not implemented: a checkpoint whose window is shorter
than the session is refused, one whose window never slides runs as transformers does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from lmdeploy import PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.domain.errors import InvalidArgument

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


def test_a_window_shorter_than_the_session_is_refused(tmp_path):
    write_tiny_mistral(tmp_path, sliding_window=16)
    with pytest.raises(InvalidArgument, match=r"sliding_window=16.*session_len=16"):
        pipeline(str(tmp_path), backend_config=PytorchEngineConfig(device_type="cpu"))
    with pytest.raises(InvalidArgument, match="sliding-window attention"):
        build(resolve(str(tmp_path)), PytorchEngineConfig(session_len=17, **CPU_CONFIG))


@pytest.mark.parametrize(
    ("sliding_window", "session_len"), [(None, None), (16, 16), (MAX_POSITIONS, None)]
)
def test_a_window_that_never_slides_runs_as_transformers(tmp_path, sliding_window, session_len):
    reference = write_tiny_mistral(tmp_path, sliding_window)
    config = PytorchEngineConfig(session_len=session_len, **CPU_CONFIG)
    built = build(resolve(str(tmp_path)), config)
    with torch.inference_mode():
        theirs = reference(torch.tensor([TOKEN_IDS])).logits[0, -1:]
    assert_logits_close(last_logits(built.runner, TOKEN_IDS), theirs)
