"""InternVL in transformers' format (`InternVLForConditionalGeneration`, the `-hf`
checkpoints): transformers' own image processor, vision tower and projector.

preprocess: the checkpoint's image processor cuts the image into its dynamic tiles (the
aspect-ratio grid closest to the image's, plus a thumbnail, between min and max patches);
each tile fills `image_seq_length` positions, written `<img>` + that many `<IMG_CONTEXT>`
+ `</img>`. encode: transformers' `get_image_features` (vision tower, pixel shuffle, MLP
projector) over the tiles of a batch of images, then each image's tiles in order. The language
model runs in the engine (models/internvl.py).
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
from .llava import load_vision_parts

IMG_START, IMG_CONTEXT, IMG_END = "<img>", "<IMG_CONTEXT>", "</img>"


def _vision_model(config: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """transformers' InternVLModel with real vision parts and no language model (the engine
    has it)."""
    from transformers import AutoModel
    from transformers.models.internvl.modeling_internvl import (
        InternVLModel,
        InternVLMultiModalProjector,
    )

    with torch.device("meta"):
        model = InternVLModel(config)
    model.language_model = nn.Identity()
    model.vision_tower = AutoModel.from_config(config.vision_config)
    model.multi_modal_projector = InternVLMultiModalProjector(config)
    model = model.to(device=device, dtype=dtype).eval()
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not meta, f"vision parts left unbuilt: {meta[:3]}"
    return model


class InternVLVisionEncoder(CheckpointVisionEncoder):
    family = "an InternVL model"
    build_model = staticmethod(_vision_model)
    load_weights = staticmethod(load_vision_parts)

    def preprocess(
        self, image: Image.Image, options: Mapping[str, Any] | None = None
    ) -> PreparedImage:
        out = self.processor(images=[image], return_tensors="pt")
        num_tokens = int(out["num_patches"][0]) * self.config.image_seq_length
        text = IMG_START + IMG_CONTEXT * num_tokens + IMG_END
        return PreparedImage(out["pixel_values"], num_tokens, text, pixel_digest(image))

    @torch.inference_mode()
    def encode(self, images: list[PreparedImage]) -> list[torch.Tensor]:
        features = self.model.get_image_features(
            pixel_values=batched(images).to(self.device, self.dtype),
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        ).pooler_output
        return per_image(features.reshape(-1, features.shape[-1]), images)
