"""Qwen2-VL and Qwen2.5-VL on tiny random checkpoints: greedy ids equal transformers' (M-RoPE
positions for the images and the text after them) for one and two images, batched with a
text-only request, with prefill chunks that start and stop inside images; the prefix cache
never shares K/V between different images."""

from __future__ import annotations

import pytest

from lmdeploy import GenerationConfig, VisionConfig
from lmdeploy.application.multimodal import split_images
from lmdeploy.vl.constants import IMAGE_TOKEN

from .test_vlm_docs import data_uri
from .tiny_vlms import (
    QWEN_IMAGE,
    TinyVLM,
    check_batched_with_text,
    check_prefix_cache_keeps_images_apart,
    greedy,
    greedy_after,
    random_image,
    save_tiny_qwen_vl,
    vlm_pipeline,
)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def vlm(request, tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model, processor = save_tiny_qwen_vl(request.param, directory, hf_tokenizer)
    # Several images a vision pass: a request's two images are packed into one batch.
    pipe = vlm_pipeline(
        directory, max_prefill_token_num=12, vision_config=VisionConfig(max_batch_size=4)
    )
    yield TinyVLM(model, processor, pipe, image_text=QWEN_IMAGE)
    pipe.close()


def test_greedy_ids_match_transformers_batched_with_text(vlm) -> None:
    # Wide, tall and square grids: M-RoPE's height and width positions differ.
    check_batched_with_text(vlm, random_image(100, 60, seed=1), random_image(60, 110, seed=2))


def test_unplaced_images_run_into_the_text(vlm) -> None:
    """Images the text does not place go first with no newline (0.6.5's Qwen2-VL prompt)."""
    images = [random_image(70, 50, seed=6), random_image(50, 70, seed=7)]
    expected = vlm.reference(QWEN_IMAGE * 2 + "Compare them.", images, 4)
    response = vlm.pipe(("Compare them.", images), gen_config=greedy(4), do_preprocess=False)
    assert response.token_ids == expected


def test_prefix_cache_keeps_different_images_apart(vlm) -> None:
    check_prefix_cache_keeps_images_apart(
        vlm, random_image(80, 80, seed=3), random_image(80, 80, seed=4)
    )


def test_an_image_part_sets_its_own_min_and_max_pixels(vlm) -> None:
    """0.6.5's per-image `min_pixels` / `max_pixels` of an image_url part: the image is
    resized within them, so it fills as many positions as the processor says at that size."""
    processor, pipe = vlm.processor, vlm.pipe
    image = random_image(100, 100, seed=5)
    url = data_uri(image)
    default = processor.image_processor(images=[image], return_tensors="pt")
    small = processor.image_processor(
        images=[image], return_tensors="pt", size={"shortest_edge": 3136, "longest_edge": 3136}
    )
    tokens = [int(out["image_grid_thw"].prod()) // 4 for out in (default, small)]
    assert tokens[0] > tokens[1]

    def input_len(**options) -> int:
        part = {"type": "image_url", "image_url": {"url": url, **options}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]
        return pipe(messages, gen_config=greedy(1)).input_token_len

    assert input_len() - input_len(max_pixels=3136) == tokens[0] - tokens[1]


def _chat_reference(vlm, messages: list, images: list, n: int, pixels: dict) -> list[int]:
    """transformers' greedy ids on the prompt the pipeline's chat template renders."""
    model, processor, pipe = vlm.model, vlm.processor, vlm.pipe
    text_messages, _ = split_images(messages, separator="")
    prompt = pipe.service.chat_template.messages2prompt(text_messages)
    size = {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
    inputs = processor(
        prompt.replace(IMAGE_TOKEN, QWEN_IMAGE), images, encode=pipe.service.encode_chat, size=size
    )
    return greedy_after(model, inputs, n)


def test_the_docs_conversation_over_two_images(vlm) -> None:
    """0.6.5's Qwen2-VL example: two image_url parts with their own min/max_pixels, then a
    follow-up turn with the answer in the history; each turn's ids equal transformers' on the
    prompt the chat template renders (M-RoPE over the whole conversation)."""
    pipe = vlm.pipe
    images = [random_image(90, 70, seed=8), random_image(60, 90, seed=9)]
    pixels = {"min_pixels": 56 * 56, "max_pixels": 84 * 84}
    parts = [{"type": "image_url", "image_url": {"url": data_uri(im), **pixels}} for im in images]
    text = {"type": "text", "text": "Describe the two images in detail."}
    messages = [{"role": "user", "content": [text, *parts]}]
    gen = GenerationConfig(top_k=1, max_new_tokens=6, ignore_eos=True)
    out = pipe(messages, gen_config=gen)
    assert out.token_ids == _chat_reference(vlm, messages, images, 6, pixels)
    messages += [
        {"role": "assistant", "content": out.text},
        {"role": "user", "content": "What are the similarities and differences between them?"},
    ]
    out = pipe(messages, gen_config=gen)
    assert out.token_ids == _chat_reference(vlm, messages, images, 6, pixels)
