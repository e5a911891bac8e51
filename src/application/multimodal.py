"""Prompts with images, as 0.6.5's VL pipeline takes them: `(text, image)` and
`(text, [images])` tuples, and GPT-4V-style messages whose user content is a list of parts
(`{'type': 'text'}`, `{'type': 'image_url', 'image_url': {'url': ...}}`, or
`{'type': 'image_data', 'image_data': {'data': PIL image}}`).

Images are taken out of the messages in order; each user turn's text keeps an IMAGE_TOKEN
where each of its images goes (prepended unless the user placed them: one a line, or as the
family writes them, e.g. Qwen2-VL's run straight into the text), so any
chat template renders the turn as text. After rendering, every IMAGE_TOKEN becomes its
image's own prompt text (the model's image tokens), and the ids' image positions become
`ImageSpan`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..domain.errors import InvalidArgument
from ..domain.sequence import ImageSpan
from .ports import PreparedImage

IMAGE_TOKEN = "<IMAGE_TOKEN>"
_IMAGE_PARTS = ("image_url", "image_data")


@dataclass(frozen=True)
class ImageRef:
    """An image of a prompt before loading: `where` names it for errors ('messages[0].content[1]');
    `options` are the other keys of its `image_url` dict (Qwen2-VL's min_pixels/max_pixels)."""

    where: str
    source: Any
    options: dict[str, Any] = field(default_factory=dict)


def is_image_tuple(prompt: object) -> bool:
    """A `(text, image)` or `(text, [images])` prompt: a tuple of two, text first. A second
    string counts as an image only as a URL (a tuple of two texts is a batch of two)."""
    if not (isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str)):
        return False
    image = prompt[1]
    return not isinstance(image, str) or image.startswith(("http://", "https://", "data:"))


def to_messages(prompt: tuple[str, Any]) -> list[dict[str, Any]]:
    """`(text, image or [images])` as one user message of content parts."""
    text, images = prompt
    images = images if isinstance(images, list) else [images]
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in images:
        if isinstance(image, str):
            parts.append({"type": "image_url", "image_url": {"url": image}})
        else:
            parts.append({"type": "image_data", "image_data": {"data": image}})
    return [{"role": "user", "content": parts}]


def has_images(prompt: object) -> bool:
    if is_image_tuple(prompt):
        return True
    if not isinstance(prompt, list):
        return False
    return any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in _IMAGE_PARTS for p in m["content"])
        for m in prompt
    )


def _source_of(part: dict[str, Any], where: str) -> Any:
    if part["type"] == "image_data":
        data = part.get("image_data")
        if not isinstance(data, dict) or "data" not in data:
            raise InvalidArgument(where, "an image_data part needs {'data': <PIL image>}")
        return data["data"]
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url:
        raise InvalidArgument(
            where, "an image_url part needs {'url': 'http(s)://...' or 'data:...'}"
        )
    return url


def _options_of(part: dict[str, Any]) -> dict[str, Any]:
    url = part.get("image_url")
    if part["type"] != "image_url" or not isinstance(url, dict):
        return {}
    return {k: v for k, v in url.items() if k not in ("url", "detail")}


def split_images(
    messages: list[dict[str, Any]], separator: str = "\n"
) -> tuple[list[dict[str, Any]], list[ImageRef]]:
    """Text-only messages with IMAGE_TOKEN placeholders, and the images in prompt order.
    Images the text does not place go first, each followed by `separator`."""
    text_messages, refs = [], []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            text_messages.append(message)
            continue
        texts, found = [], []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _IMAGE_PARTS:
                where = f"messages[{i}].content[{j}]"
                found.append(ImageRef(where, _source_of(part, where), _options_of(part)))
            elif kind == "text":
                texts.append(str(part.get("text", "")))
        if found and message.get("role") != "user":
            raise InvalidArgument(found[0].where, "only user messages may carry images")
        text = "".join(texts)
        if found and IMAGE_TOKEN not in text:
            text = (IMAGE_TOKEN + separator) * len(found) + text
        elif text.count(IMAGE_TOKEN) != len(found):
            raise InvalidArgument(
                f"messages[{i}].content",
                f"the text places {text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} but the message has "
                f"{len(found)} images; place one per image or none (then each goes first)",
            )
        text_messages.append({**message, "content": text})
        refs += found
    return text_messages, refs


def expand(text: str, images: list[PreparedImage]) -> str:
    """The rendered prompt with each IMAGE_TOKEN replaced by its image's prompt text."""
    pieces = text.split(IMAGE_TOKEN)
    if len(pieces) != len(images) + 1:
        raise InvalidArgument(
            "prompt",
            f"the prompt has {len(pieces) - 1} {IMAGE_TOKEN} for {len(images)} images; "
            "the chat template must keep each user turn's text whole",
        )
    out = [pieces[0]]
    for image, piece in zip(images, pieces[1:], strict=True):
        out += [image.prompt_text, piece]
    return "".join(out)


def image_spans(
    input_ids: list[int], images: list[PreparedImage], image_token_id: int
) -> tuple[ImageSpan, ...]:
    """Each image's positions: the next `num_tokens` image-token ids, which must be one run."""
    positions = [p for p, t in enumerate(input_ids) if t == image_token_id]
    if len(positions) != sum(image.num_tokens for image in images):
        raise InvalidArgument(
            "prompt",
            f"the prompt holds {len(positions)} image tokens where its images need "
            f"{sum(image.num_tokens for image in images)}; do not write the model's image "
            f"token in the text (use {IMAGE_TOKEN} to place an image)",
        )
    spans, taken = [], 0
    for image in images:
        run = positions[taken : taken + image.num_tokens]
        if run[-1] - run[0] != image.num_tokens - 1:
            raise InvalidArgument("prompt", "an image's tokens are not contiguous in the prompt")
        spans.append(ImageSpan(run[0], image.num_tokens, image.digest, grid=image.grid))
        taken += image.num_tokens
    return tuple(spans)
