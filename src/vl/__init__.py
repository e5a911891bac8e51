"""The documented `lmdeploy.vl` import path: `from lmdeploy.vl import load_image`."""

from ..adapters.vision.image_loader import load_image

__all__ = ["load_image"]
