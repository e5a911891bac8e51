"""Images in prompts without a model: placement of IMAGE_TOKEN, image spans, prefix-cache keys
and the vision worker's batching, against a fake encoder."""

from __future__ import annotations

import threading

import pytest

from lmdeploy.application.multimodal import (
    IMAGE_TOKEN,
    expand,
    image_spans,
    is_image_tuple,
    split_images,
    to_messages,
)
from lmdeploy.application.ports import PreparedImage
from lmdeploy.application.vision import PendingImage, VisionService
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import ImageSpan, Sequence

IMG = 99  # the fake model's image token id


class FakeEncoder:
    image_token_id = IMG
    image_separator = "\n"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def preprocess(self, image, options=None) -> PreparedImage:
        return PreparedImage(image, image["n"], "<img>" * image["n"], hash(image.get("name")))

    def encode(self, images: list[PreparedImage]) -> list:
        self.batches.append(len(images))
        return [[image.pixels["name"]] * image.num_tokens for image in images]


class FakeLoader:
    def load(self, source, where: str):
        if source == "broken":
            raise InvalidArgument(where, "not an image")
        return source


def test_a_tuple_prompt_puts_each_image_first_one_a_line() -> None:
    messages, refs = split_images(to_messages(("describe", [{"n": 1}, {"n": 2}])))
    assert messages == [{"role": "user", "content": f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\ndescribe"}]
    assert [r.where for r in refs] == ["messages[0].content[1]", "messages[0].content[2]"]


def test_a_family_may_run_unplaced_images_into_the_text() -> None:
    messages, _ = split_images(to_messages(("describe", [{"n": 1}, {"n": 2}])), separator="")
    assert messages[0]["content"] == f"{IMAGE_TOKEN}{IMAGE_TOKEN}describe"


def test_an_image_url_part_keeps_its_other_keys_as_options() -> None:
    url = {"url": "data:x", "max_pixels": 3136, "detail": "low"}
    part = {"type": "image_url", "image_url": url}
    _, refs = split_images([{"role": "user", "content": [part]}])
    assert refs[0].source == "data:x" and refs[0].options == {"max_pixels": 3136}


def test_placed_image_tokens_are_kept_and_must_match_the_images() -> None:
    messages, _ = split_images(to_messages((f"look{IMAGE_TOKEN}", {"n": 1})))
    assert messages[0]["content"] == f"look{IMAGE_TOKEN}"
    with pytest.raises(InvalidArgument, match="messages\\[0\\].content"):
        split_images(to_messages((f"{IMAGE_TOKEN}{IMAGE_TOKEN}", {"n": 1})))


def test_two_texts_are_a_batch_not_an_image_prompt() -> None:
    assert not is_image_tuple(("first prompt", "second prompt"))
    assert is_image_tuple(("describe", "https://example.com/a.png"))


def test_spans_follow_the_image_tokens_in_order() -> None:
    images = [PreparedImage(None, 2, "<img><img>", 1), PreparedImage(None, 3, "", 2)]
    assert expand(f"a{IMAGE_TOKEN}b{IMAGE_TOKEN}", images) == "a<img><img>b"
    spans = image_spans([5, IMG, IMG, 6, IMG, IMG, IMG, 7], images, IMG)
    assert [(s.offset, s.num_tokens, s.digest) for s in spans] == [(1, 2, 1), (4, 3, 2)]
    with pytest.raises(InvalidArgument, match="image tokens"):
        image_spans([IMG, IMG, IMG, IMG], images, IMG)


def _seq(tokens: list[int], digest: int) -> Sequence:
    return Sequence(tokens, SamplingParams(), 100, images=(ImageSpan(2, 3, digest),))


def test_block_keys_differ_by_image_only_where_the_image_is() -> None:
    a, b = _seq(list(range(12)), 1), _seq(list(range(12)), 2)
    assert a.block_key(0, 4) != b.block_key(0, 4)  # the image's positions 2..4
    assert a.block_key(1, 4) != b.block_key(1, 4)
    assert a.block_key(2, 4) == b.block_key(2, 4) == tuple(range(8, 12))


def test_a_new_turn_with_another_image_keeps_only_the_prefix_before_it() -> None:
    seq = _seq(list(range(12)), 1)
    seq.num_cached_tokens = 12
    seq.continue_with(list(range(14)), SamplingParams(), (ImageSpan(2, 3, 7),))
    assert seq.num_cached_tokens == 2
    seq.num_cached_tokens = 14
    seq.continue_with(list(range(16)), SamplingParams(), (ImageSpan(2, 3, 7),))
    assert seq.num_cached_tokens == 14


def test_an_image_too_large_for_the_session_names_its_part() -> None:
    service = VisionService(FakeEncoder(), FakeLoader())
    messages, refs = split_images(to_messages(("hi", [{"n": 1}, {"n": 50}])))
    with pytest.raises(InvalidArgument, match=r"messages\[0\].content\[2\].*50 tokens"):
        service.prepare(refs, session_len=40)
    _, refs = split_images(to_messages(("hi", "broken")))
    with pytest.raises(InvalidArgument, match=r"messages\[0\].content\[1\]"):
        service.prepare(refs, session_len=40)


def test_the_worker_batches_images_of_waiting_requests_up_to_max_batch_size() -> None:
    encoder = FakeEncoder()
    service = VisionService(encoder, FakeLoader(), max_batch_size=3)
    done = threading.Semaphore(0)
    requests = []
    for i in range(4):
        image = {"n": 2, "name": f"img{i}"}
        pending = [
            PendingImage(ImageSpan(0, 2, i), encoder.preprocess(image)),
            PendingImage(ImageSpan(3, 2, i), encoder.preprocess(image)),
        ]
        requests.append(pending)
        service.encode_then(pending, done.release, lambda error: pytest.fail(error))
    service.start()  # the four requests wait together: 8 images in passes of 3
    for _ in requests:
        assert done.acquire(timeout=10)
    service.stop()
    assert encoder.batches == [3, 3, 2]
    assert requests[2][1].span.embeddings == ["img2", "img2"]
