"""InternVL (transformers' format) on tiny random checkpoints with a Qwen2 and a Llama language
model: greedy ids equal transformers' (dynamic tiles, pixel shuffle, MLP projector) for one
and two images, batched with a text-only request, with prefill chunks that start and stop
inside images; the prefix cache never shares K/V between different images."""

from __future__ import annotations

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, VisionConfig, pipeline
from lmdeploy.vl.constants import IMAGE_TOKEN

from .tiny_vlms import INTERNVL_IMAGE, random_image, reference_greedy, save_tiny_internvl

ONE = f"{IMAGE_TOKEN}\nWhat is shown here?"
TWO = f"Image-1: {IMAGE_TOKEN}\nImage-2: {IMAGE_TOKEN}\nCompare the two images."
TEXT = "Tell me a story about the sea and the ships on it."


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def vlm(request, tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp(f"tiny-internvl-{request.param}")
    model, processor = save_tiny_internvl(request.param, directory, hf_tokenizer)
    # Small blocks and prefill chunks: chunks start and stop inside images.
    config = PytorchEngineConfig(
        session_len=512, block_size=16, max_prefill_token_num=12, enable_prefix_caching=True
    )
    # Several images a vision pass: a request's two images are packed into one batch.
    pipe = pipeline(
        str(directory), backend_config=config, vision_config=VisionConfig(max_batch_size=4)
    )
    yield model, processor, pipe
    pipe.close()


def _reference(vlm, text: str, images: list, n: int) -> list[int]:
    model, processor, _ = vlm
    return reference_greedy(model, processor, text.replace(IMAGE_TOKEN, INTERNVL_IMAGE), images, n)


def _greedy(n: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, ignore_eos=True)


def test_greedy_ids_match_transformers_batched_with_text(vlm) -> None:
    pipe = vlm[2]
    # Wide and tall: tiles of different grids, plus the thumbnail.
    a, b = random_image(90, 40, seed=1), random_image(40, 70, seed=2)
    cases = [(ONE, [a], 12), (TWO, [a, b], 10), (TEXT, [], 8), (ONE, [b], 6)]
    expected = [_reference(vlm, text, images, n) for text, images, n in cases]
    prompts = [(text, images) if images else text for text, images, _ in cases]
    responses = pipe(prompts, gen_config=[_greedy(n) for *_, n in cases], do_preprocess=False)
    assert [r.token_ids for r in responses] == expected
    stats = pipe.service.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks, "KV blocks leaked"


def test_prefix_cache_keeps_different_images_apart(vlm) -> None:
    pipe = vlm[2]
    a, b = random_image(60, 60, seed=3), random_image(60, 60, seed=4)
    text = ONE + " " + TEXT
    expected_a, expected_b = _reference(vlm, text, [a], 8), _reference(vlm, text, [b], 8)
    assert expected_a != expected_b, "the images must steer the tiny model apart"

    def run(image) -> tuple[list[int], int]:
        response = pipe((text, image), gen_config=_greedy(8), do_preprocess=False)
        return response.token_ids, pipe.service.engine.stats().num_prefix_hit_tokens

    ids, hits = run(a)
    assert ids == expected_a
    ids, hits_again = run(a)
    assert ids == expected_a and hits_again > hits, "the same image reuses its cached blocks"
    ids, hits_other = run(b)
    assert ids == expected_b
    assert hits_other == hits_again, "no block holding an image is shared with another image"


def test_a_language_model_it_cannot_run_is_named() -> None:
    from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
    from lmdeploy.adapters.engines.pytorch.models.internvl import (
        internvl_for_conditional_generation,
    )

    config = ModelConfig(64, 32, 64, 1, 2, 2, 16, text_model_type="internlm2")
    with pytest.raises(NotImplementedError, match="'internlm2' language model"):
        internvl_for_conditional_generation(config)
