"""The documentation's VLM examples, adapted to a tiny random LLaVA; and the errors a user
sees for images a model cannot take."""

from __future__ import annotations

import base64
import io

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, VisionConfig, pipeline
from lmdeploy.vl import load_image
from lmdeploy.vl.constants import IMAGE_TOKEN

from .tiny_vlms import random_image, save_tiny_vlm

GEN = GenerationConfig(max_new_tokens=6, top_k=1)


def data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, hf_tokenizer):
    directory = tmp_path_factory.mktemp("tiny-llava-docs")
    save_tiny_vlm("llava", directory, hf_tokenizer)
    return directory


@pytest.fixture(scope="module")
def pipe(llava_dir):
    pipe = pipeline(
        str(llava_dir),
        backend_config=PytorchEngineConfig(session_len=512),
        vision_config=VisionConfig(max_batch_size=16),
    )
    yield pipe
    pipe.close()


def test_hello_world_tuple_list_and_batch(pipe, tmp_path) -> None:
    path = tmp_path / "tiger.png"
    random_image(64, 48, seed=5).save(path)
    image = load_image(str(path))
    one = pipe(("describe this image", image), gen_config=GEN)
    assert one.generate_token_len == 6 and one.input_token_len > 16
    two = pipe(("describe this image", [image, random_image(30, 30, 6)]), gen_config=GEN)
    assert two.input_token_len == one.input_token_len + 16 + 1  # one more image and its newline
    batch = pipe([("describe this image", load_image(data_uri(image))), "hi"], gen_config=GEN)
    assert batch[0].token_ids == one.token_ids  # the same pixels, loaded from a data URI


def test_openai_messages_and_image_token_placement(pipe) -> None:
    image = random_image(40, 40, seed=7)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe this image"},
                {"type": "image_url", "image_url": {"url": data_uri(image)}},
            ],
        }
    ]
    assert (
        pipe(messages, gen_config=GEN).token_ids
        == pipe(("describe this image", image), gen_config=GEN).token_ids
    )
    placed = pipe((f"describe this image{IMAGE_TOKEN}", image), gen_config=GEN)
    assert placed.generate_token_len == 6


def test_multi_turn_chat_with_an_image_matches_the_whole_history(pipe) -> None:
    image = random_image(50, 40, seed=8)
    sess = pipe.chat(("describe this image", image), gen_config=GEN)
    first = sess.response.text
    sess = pipe.chat("What is the woman doing?", session=sess, gen_config=GEN)
    history = to_history(image, first, "What is the woman doing?")
    assert sess.response.token_ids == pipe(history, gen_config=GEN).token_ids
    sess.close()


def to_history(image, reply: str, question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe this image"},
                {"type": "image_data", "image_data": {"data": image}},
            ],
        },
        {"role": "assistant", "content": reply},
        {"role": "user", "content": question},
    ]


def test_output_logits_of_an_image_prompt(pipe) -> None:
    response = pipe(
        ("describe this image", random_image(30, 30, 9)),
        gen_config=GenerationConfig(max_new_tokens=3, top_k=1, output_logits="generation"),
    )
    assert response.logits.shape[0] == 3


def test_bad_images_are_errors_naming_the_part(pipe) -> None:
    not_an_image = "data:image/png;base64," + base64.b64encode(b"hello").decode()
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[1\].*not an image"):
        pipe(("describe", not_an_image), gen_config=GEN)
    with pytest.raises(ValueError, match=r"messages\[0\]\.content\[1\].*could not fetch"):
        pipe(("describe", "http://127.0.0.1:9/tiger.png"), gen_config=GEN)


def test_a_text_only_model_refuses_images() -> None:
    with pipeline(backend_config=PytorchEngineConfig(session_len=256)) as text_only:
        with pytest.raises(ValueError, match="reads text only"):
            text_only(("describe this image", random_image(20, 20, 1)))
