"""LLaVA and LLaVA-NeXT on tiny random checkpoints: greedy ids equal transformers' for one and
two images, batched with a text-only request, under chunked prefill and the prefix cache;
the prefix cache never shares K/V between different images."""

from __future__ import annotations

import pytest

from .tiny_vlms import (
    TinyVLM,
    check_batched_with_text,
    check_prefix_cache_keeps_images_apart,
    random_image,
    save_tiny_vlm,
    vlm_pipeline,
)


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def vlm(request, tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model, processor = save_tiny_vlm(request.param, directory, hf_tokenizer)
    pipe = vlm_pipeline(directory, max_prefill_token_num=24)
    yield TinyVLM(model, processor, pipe, image_text="<image>")
    pipe.close()


def test_greedy_ids_match_transformers_batched_with_text(vlm) -> None:
    check_batched_with_text(vlm, random_image(40, 30, seed=1), random_image(50, 64, seed=2))


def test_prefix_cache_keeps_different_images_apart(vlm) -> None:
    check_prefix_cache_keeps_images_apart(
        vlm, random_image(33, 47, seed=3), random_image(33, 47, seed=4)
    )
