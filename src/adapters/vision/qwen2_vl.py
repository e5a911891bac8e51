"""Qwen2-VL (`Qwen2VLForConditionalGeneration`) and Qwen2.5-VL
(`Qwen2_5_VLForConditionalGeneration`): transformers' own image processor and vision tower.

preprocess: the checkpoint's image processor resizes to its dynamic resolution (multiples of
patch x merge pixels between min_pixels and max_pixels) and gives the patches and the image's
grid (t, h, w) in patches; the image fills t*h*w / merge**2 positions, written
`<|vision_start|>` + that many `<|image_pad|>` + `<|vision_end|>`. `PreparedImage.grid` is the
merged grid (t, h / merge, w / merge): the M-RoPE layout of its positions (runner/mrope.py).
encode: the vision tower with its patch merger, the images of a batch packed along the patch
axis as transformers does. The language model runs in the engine (models/qwen2_vl.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image
from torch import nn

from ...application.ports import PreparedImage
from .checkpoint import CheckpointVisionEncoder, batched, per_image
from .digest import pixel_digest

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
_PREFIXES = ("model.visual.", "visual.")


def _size(options: Mapping[str, Any], size: Any) -> dict[str, Any]:
    """The image processor's size override for an image part's min_pixels / max_pixels (0.6.5
    reads them per image); a bound not given stays the checkpoint's (`size`)."""
    low, high = options.get("min_pixels"), options.get("max_pixels")
    if low is None and high is None:
        return {}
    return {
        "size": {
            "shortest_edge": int(low) if low is not None else size["shortest_edge"],
            "longest_edge": int(high) if high is not None else size["longest_edge"],
        }
    }


def _vision_tower(config: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if config.model_type == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel as Tower,
        )
    else:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (
            Qwen2VisionTransformerPretrainedModel as Tower,
        )
    tower = Tower._from_config(config.vision_config)
    return tower.to(device=device, dtype=dtype).eval()


def _load_tower_weights(tower: nn.Module, weights: Any) -> None:
    wanted = dict(tower.state_dict())
    loaded = set()
    for name, tensor in weights():
        for prefix in _PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :] in wanted:
                wanted[name[len(prefix) :]].copy_(tensor)
                loaded.add(name[len(prefix) :])
    missing = [n for n in wanted if n not in loaded]
    if missing:
        raise ValueError(f"vision weights missing from the checkpoint: {missing[:5]}")


class Qwen2VLVisionEncoder(CheckpointVisionEncoder):
    family = "a Qwen2-VL model"
    build_model = staticmethod(_vision_tower)
    load_weights = staticmethod(_load_tower_weights)
    image_separator = ""  # 0.6.5 and the model's template run the images into the text

    def preprocess(
        self, image: Image.Image, options: Mapping[str, Any] | None = None
    ) -> PreparedImage:
        out = self.processor(
            images=[image], return_tensors="pt", **_size(options or {}, self.processor.size)
        )
        merge = self.config.vision_config.spatial_merge_size
        t, h, w = (int(n) for n in out["image_grid_thw"][0])
        grid = (t, h // merge, w // merge)
        num_tokens = grid[0] * grid[1] * grid[2]
        pixels = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        text = VISION_START + IMAGE_PAD * num_tokens + VISION_END
        # The same pixels resized otherwise (min/max_pixels) are another image to the cache.
        digest = hash((pixel_digest(image), grid))
        return PreparedImage(pixels, num_tokens, text, digest, grid=grid)

    @torch.inference_mode()
    def encode(self, images: list[PreparedImage]) -> list[torch.Tensor]:
        features = self.model(
            batched(images, "pixel_values").to(self.device, self.dtype),
            grid_thw=batched(images, "image_grid_thw").to(self.device),
        ).pooler_output
        return per_image(features, images)
