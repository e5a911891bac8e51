"""A vision-language model behind the api_server, through the official openai client: an
image as a data: URI content part; bad images and text-only models answer 400 naming why."""

from __future__ import annotations

import pytest

from tests.integration.test_vlm_docs import data_uri
from tests.integration.tiny_vlms import random_image, save_tiny_vlm

from .server import api_server


@pytest.fixture(scope="module")
def vlm_client(tmp_path_factory, hf_tokenizer):
    from openai import OpenAI

    directory = tmp_path_factory.mktemp("tiny-llava-server")
    save_tiny_vlm("llava", directory, hf_tokenizer)
    with api_server(str(directory), "--session-len", "512") as server:
        yield OpenAI(api_key="none", base_url=f"{server.url}/v1")


def _ask(client, url: str, **options):
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this image"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        max_tokens=5,
        temperature=0,
        **options,
    )


def test_a_data_uri_image_is_answered(vlm_client) -> None:
    reply = _ask(vlm_client, data_uri(random_image(40, 30, seed=1)))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens > 16 and reply.usage.completion_tokens == 5
    again = _ask(vlm_client, data_uri(random_image(40, 30, seed=1)))
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_bad_images_are_400_naming_the_content_part(vlm_client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.content\[1\]"):
        _ask(vlm_client, "data:image/png;base64,aGVsbG8=")
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.content\[1\]"):
        _ask(vlm_client, "http://127.0.0.1:9/tiger.png")


def test_a_text_only_model_given_an_image_is_400(openai_client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="reads text only"):
        _ask(openai_client, data_uri(random_image(20, 20, seed=2)))
