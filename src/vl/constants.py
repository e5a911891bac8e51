"""`from lmdeploy.vl.constants import IMAGE_TOKEN`: where an image goes in a prompt's text."""

from ..application.multimodal import IMAGE_TOKEN

__all__ = ["IMAGE_TOKEN"]
