"""M-RoPE (Qwen2-VL): our 3-D positions equal transformers' `get_rope_index` for prompts with
images of several grids, a prefill chunk's slice of them equals the whole's, our cos/sin equal
transformers' rotary embedding on those positions, and a decode step's staged rotary position
is the token's index shifted by its images (what CUDA graphs read)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VLRotaryEmbedding

from lmdeploy.adapters.engines.pytorch.layers.rotary import RotaryTables
from lmdeploy.adapters.engines.pytorch.runner.decode_inputs import DecodeInputs
from lmdeploy.adapters.engines.pytorch.runner.mrope import mrope_positions, rope_delta
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import ImageSpan, Sequence

IMAGE_ID, MERGE = 7, 2
SECTION = (4, 6, 6)  # head_dim 32
# (text before, merged grid (t, h, w)) of each image; then 5 tokens of text.
LAYOUTS = [
    [(3, (1, 2, 3))],
    [(0, (1, 4, 2)), (2, (1, 1, 1)), (4, (1, 3, 3))],
]


def _prompt(layout) -> tuple[list[int], tuple[ImageSpan, ...], list[tuple[int, int, int]]]:
    ids, spans, grids = [], [], []
    for text, grid in layout:
        ids += [1] * text
        n = grid[0] * grid[1] * grid[2]
        spans.append(ImageSpan(len(ids), n, digest=len(spans), grid=grid))
        grids.append((grid[0], grid[1] * MERGE, grid[2] * MERGE))  # in patches, as HF has it
        ids += [IMAGE_ID] * n
    return ids + [1] * 5, tuple(spans), grids


def _transformers_positions(ids, grids) -> tuple[np.ndarray, int]:
    vision = transformers.Qwen2VLConfig().vision_config
    config = transformers.Qwen2VLConfig(
        vision_config={**vision.to_dict(), "spatial_merge_size": MERGE}
    )
    model = Qwen2VLModel.__new__(Qwen2VLModel)
    model.config = config
    input_ids = torch.tensor([ids])
    positions, deltas = model.get_rope_index(
        input_ids, (input_ids == IMAGE_ID).int(), image_grid_thw=torch.tensor(grids)
    )
    return positions[:, 0].numpy(), int(deltas[0, 0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions_equal_transformers_whole_and_in_chunks(layout) -> None:
    ids, spans, grids = _prompt(layout)
    expected, delta = _transformers_positions(ids, grids)
    assert (mrope_positions(spans, 0, len(ids)) == expected).all()
    for start in range(0, len(ids), 5):  # chunks that start and stop inside images
        end = min(start + 5, len(ids))
        assert (mrope_positions(spans, start, end) == expected[:, start:end]).all()
    assert rope_delta(spans) == delta
    after = mrope_positions(spans, len(ids), len(ids) + 3)
    assert (after == np.arange(len(ids), len(ids) + 3) + delta).all(), "decode: index + delta"


def test_cos_sin_equal_transformers() -> None:
    ids, spans, _ = _prompt(LAYOUTS[1])
    positions = torch.from_numpy(mrope_positions(spans, 0, len(ids)))
    rope = {"rope_type": "default", "mrope_section": list(SECTION), "rope_theta": 10000.0}
    text = transformers.Qwen2VLTextConfig(
        hidden_size=128, num_attention_heads=4, rope_parameters=rope
    )
    hf_cos, hf_sin = Qwen2VLRotaryEmbedding(text)(torch.zeros(1), positions[:, None, :])
    tables = RotaryTables(32, 64, 10000.0, None, 64, torch.device("cpu"), SECTION)
    cos, sin = tables.mrope(positions)
    torch.testing.assert_close(cos, hf_cos[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin, hf_sin[0], rtol=1e-5, atol=1e-5)


def test_decode_inputs_stage_shifted_rotary_positions() -> None:
    ids, spans, _ = _prompt(LAYOUTS[1])
    with_images = Sequence(ids, SamplingParams(), max_len=64, images=spans)
    text_only = Sequence([1] * 9, SamplingParams(), max_len=64)
    for seq in (with_images, text_only):
        seq.num_cached_tokens = len(seq.token_ids) - 1
        seq.block_table = [0, 1, 2, 3]
    inputs = DecodeInputs(4, 4, 16, torch.device("cpu"))
    inputs.load([with_images, text_only])
    last = len(ids) - 1
    assert inputs.positions[:2].tolist() == [last + rope_delta(spans), 8]
    assert inputs.context_lens[:2].tolist() == [last + 1, 9]


def test_config_reads_mrope_section_of_both_formats() -> None:
    """Qwen2-VL's own config.json (top-level text fields, `rope_scaling: {type: mrope}`) and
    transformers 5's (`text_config.rope_parameters`)."""
    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig

    shape = dict(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, architectures=["Qwen2VLForConditionalGeneration"],
    )  # fmt: skip
    legacy = {**shape, "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}}
    current = {
        "architectures": shape.pop("architectures"),
        "text_config": {
            **shape,
            "model_type": "qwen2_vl_text",
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6]},
        },
    }
    for cfg in (legacy, current):
        config = ModelConfig.from_hf(cfg)
        assert config.mrope_section == (4, 6, 6) and config.rope_scaling is None
