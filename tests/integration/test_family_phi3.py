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

from .tiny_models import TINY_SHAPE, TinyFamily, family_fixture, greedy_ids_match_test


def phi3_config(**overrides) -> transformers.Phi3Config:
    return transformers.Phi3Config(
        **TINY_SHAPE,
        original_max_position_embeddings=1024,
        pad_token_id=0,
        **overrides,
    )


family = family_fixture(phi3_config())
test_greedy_ids_match_transformers = greedy_ids_match_test()


def _with_config(family: TinyFamily, tmp_path, **changes):
    """The tiny checkpoint's files with config.json changed."""
    source = family.directory
    for path in source.iterdir():
        (tmp_path / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text()) | changes
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_longrope_is_refused_naming_what_to_use(family, tmp_path):
    factors = [1.0] * 16
    directory = _with_config(
        family,
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


def test_partial_rotary_is_refused(family, tmp_path):
    directory = _with_config(family, tmp_path, partial_rotary_factor=0.75)
    with pytest.raises(InvalidArgument, match="75% of each head"):
        pipeline(str(directory), backend_config=PytorchEngineConfig(session_len=512))
