"""InternVL (transformers' format) on tiny random checkpoints with a Qwen2 and a Llama language
model: greedy ids equal transformers' (dynamic tiles, pixel shuffle, MLP projector) for one
and two images, batched with a text-only request, with prefill chunks that start and stop
inside images; the prefix cache never shares K/V between different images."""

from __future__ import annotations

import pytest

from lmdeploy import VisionConfig

from .tiny_vlms import (
    INTERNVL_IMAGE,
    TinyVLM,
    check_batched_with_text,
    check_prefix_cache_keeps_images_apart,
    random_image,
    save_tiny_internvl,
    vlm_pipeline,
)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def vlm(request, tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp(f"tiny-internvl-{request.param}")
    model, processor = save_tiny_internvl(request.param, directory, hf_tokenizer)
    # Several images a vision pass: a request's two images are packed into one batch.
    pipe = vlm_pipeline(
        directory, max_prefill_token_num=12, vision_config=VisionConfig(max_batch_size=4)
    )
    yield TinyVLM(model, processor, pipe, image_text=INTERNVL_IMAGE)
    pipe.close()


def test_greedy_ids_match_transformers_batched_with_text(vlm) -> None:
    # Wide and tall: tiles of different grids, plus the thumbnail.
    check_batched_with_text(vlm, random_image(90, 40, seed=1), random_image(40, 70, seed=2))


def test_prefix_cache_keeps_different_images_apart(vlm) -> None:
    check_prefix_cache_keeps_images_apart(
        vlm, random_image(60, 60, seed=3), random_image(60, 60, seed=4)
    )


def test_a_language_model_it_cannot_run_is_named() -> None:
    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
    from lmdeploy.adapters.engines.pytorch.models.internvl import (
        internvl_for_conditional_generation,
    )

    config = ModelConfig(64, 32, 64, 1, 2, 2, 16, text_model_type="internlm2")
    with pytest.raises(NotImplementedError, match="'internlm2' language model"):
        internvl_for_conditional_generation(config)
