"""The Phi-3 family on a tiny random checkpoint: greedy ids equal transformers'.

Its checkpoint stores Q/K/V and gate/up fused; the rotary scalings and partial rotary we do not
implement are refused when the pipeline is built, with what to use instead.
"""

from __future__ import annotations

import json

import pytest
import transformers

from lmdeploy import PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidArgument
from tests.conftest import LONG_TEXT

from .tiny_models import (
    ENGINE_CONFIGS,
    VOCAB_SIZE,
    assert_greedy_ids_match,
    prompts,
    reference_greedy,
    save_tiny_checkpoint,
)


def phi3_config(**overrides) -> transformers.Phi3Config:
    return transformers.Phi3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        original_max_position_embeddings=1024,
        pad_token_id=0,
        **overrides,
    )


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp("tiny-phi3")
    model = save_tiny_checkpoint(phi3_config(), directory, hf_tokenizer)
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, prompt_ids, reference_greedy(model, prompt_ids)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers(tiny_phi3, options):
    directory, prompt_ids, reference = tiny_phi3
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)


def _with_config(tiny_phi3, tmp_path, **changes):
    """The tiny checkpoint's files with config.json changed."""
    source = tiny_phi3[0]
    for path in source.iterdir():
        (tmp_path / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text()) | changes
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_longrope_is_refused_naming_what_to_use(tiny_phi3, tmp_path):
    factors = [1.0] * 16
    directory = _with_config(
        tiny_phi3,
        tmp_path,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": factors,
            "long_factor": factors,
        },
    )
    with pytest.raises(NotImplementedError, match="'longrope'.*4k-context"):
        pipeline(str(directory), backend_config=PytorchEngineConfig(session_len=512))


def test_partial_rotary_is_refused(tiny_phi3, tmp_path):
    directory = _with_config(tiny_phi3, tmp_path, partial_rotary_factor=0.75)
    with pytest.raises(InvalidArgument, match="75% of each head"):
        pipeline(str(directory), backend_config=PytorchEngineConfig(session_len=512))
