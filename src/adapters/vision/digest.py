"""The prefix-cache key of an image's positions."""

from __future__ import annotations

import hashlib

from PIL import Image


def pixel_digest(image: Image.Image) -> int:
    """A hash of the image's pixels and size: the prefix-cache key of its positions."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=8)
    digest.update(repr((image.size, image.mode)).encode())
    return int.from_bytes(digest.digest(), "little")
