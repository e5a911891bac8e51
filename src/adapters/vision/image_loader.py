"""Images from what users pass: PIL images, local paths, http(s) URLs, data: URIs."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from ...domain.errors import InvalidArgument

MAX_IMAGE_BYTES = 32 << 20  # a larger download is refused rather than held in memory


def _fetch(url: str, timeout: float) -> bytes:
    with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
        response.raise_for_status()
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > MAX_IMAGE_BYTES:
                raise ValueError(f"the image is larger than {MAX_IMAGE_BYTES >> 20} MiB")
        return bytes(data)


def _data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if ";base64" not in header:
        raise ValueError("a data: URI image must be base64 ('data:image/png;base64,...')")
    return base64.b64decode(payload, validate=True)


def _bytes_of(source: str, timeout: float) -> bytes:
    if source.startswith(("http://", "https://")):
        return _fetch(source, timeout)
    if source.startswith("data:"):
        return _data_uri(source)
    return Path(source.removeprefix("file://")).read_bytes()


def open_image(source: Any, timeout: float = 10.0) -> Image.Image:
    """An RGB image; ValueError / OSError / httpx errors when `source` is none."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if not isinstance(source, str):
        raise ValueError(
            f"expected a PIL image, a path, a URL or a data: URI, got {type(source).__name__}"
        )
    image = Image.open(io.BytesIO(_bytes_of(source, timeout)))
    image.load()
    return image.convert("RGB")


class PILImageLoader:
    """The ImageLoader port. URLs are fetched with a short timeout: an unreachable host fails
    the request (400) instead of holding a worker."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def load(self, source: Any, where: str) -> Image.Image:
        try:
            return open_image(source, self.timeout)
        except httpx.HTTPError as exc:
            raise InvalidArgument(
                where, f"could not fetch the image ({exc}); check the URL"
            ) from None
        except (UnidentifiedImageError, binascii.Error) as exc:
            raise InvalidArgument(
                where,
                f"the payload is not an image PIL can read ({type(exc).__name__}); send a PNG, JPEG, ...",
            ) from None
        except (ValueError, OSError) as exc:
            raise InvalidArgument(where, f"could not read the image: {exc}") from None


def load_image(image: str | Image.Image) -> Image.Image:
    """0.6.5's `lmdeploy.vl.load_image`: a URL, a path, a data: URI or a PIL image -> RGB."""
    return open_image(image)
