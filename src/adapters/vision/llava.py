"""LLaVA (`LlavaForConditionalGeneration`) and LLaVA-NeXT (`LlavaNextForConditionalGeneration`)
of llava-hf checkpoints: transformers' own processor, vision tower and projector.

preprocess: the checkpoint's processor (its image processor with the saved settings: CLIP's
resize/crop for LLaVA, anyres tiling for NeXT) gives the pixels and, through the image tokens
it writes for one `<image>`, how many positions the image fills. encode: transformers'
`get_image_features` (vision feature layer and select strategy from the config; NeXT packs
its tiles with image_newline), so the rows equal what the reference model places in its
prompt. The language model runs in the engine (models/llava.py).
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

# Vision tensors of the checkpoint; transformers 5 prefixes them with `model.`.
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "image_newline")


def _vision_model(config: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """transformers' Llava(Next)Model with real vision parts and no language model (the
    engine has it): built on the meta device, then each vision part built for real."""
    from transformers import AutoModel
    from transformers.models.llava.modeling_llava import LlavaModel, LlavaMultiModalProjector
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    cls = LlavaNextModel if config.model_type == "llava_next" else LlavaModel
    with torch.device("meta"):
        model = cls(config)
    model.language_model = nn.Identity()
    model.vision_tower = AutoModel.from_config(config.vision_config)
    model.multi_modal_projector = LlavaMultiModalProjector(config)
    if hasattr(model, "image_newline"):
        std = 1 / config.text_config.hidden_size**0.5
        model.image_newline = nn.Parameter(torch.randn(config.text_config.hidden_size) * std)
    model = model.to(device=device, dtype=dtype).eval()
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not meta, f"vision parts left unbuilt: {meta[:3]}"
    return model


def load_vision_parts(model: nn.Module, weights: Any) -> None:
    """Fill the vision tower, projector (and image_newline) of a llava-style model."""
    wanted = dict(model.state_dict())
    loaded = set()
    for name, tensor in weights():
        name = name.removeprefix("model.")
        if name.startswith(_VISION_PREFIXES) and name in wanted:
            wanted[name].copy_(tensor)
            loaded.add(name)
    missing = [n for n in wanted if n not in loaded and not n.endswith("position_ids")]
    if missing:
        raise ValueError(f"vision weights missing from the checkpoint: {missing[:5]}")


class LlavaVisionEncoder(CheckpointVisionEncoder):
    family = "a LLaVA model"
    processor_class = "AutoProcessor"
    build_model = staticmethod(_vision_model)
    load_weights = staticmethod(load_vision_parts)

    @property
    def image_token_id(self) -> int:
        return getattr(self.config, "image_token_id", None) or self.config.image_token_index

    def preprocess(
        self, image: Image.Image, options: Mapping[str, Any] | None = None
    ) -> PreparedImage:
        image_token = self.processor.image_token
        out = self.processor(text=image_token, images=[image], return_tensors="pt")
        num_tokens = int((out["input_ids"] == self.image_token_id).sum())
        pixels = {"pixel_values": out["pixel_values"]}
        if "image_sizes" in out:  # NeXT: one image's tiles, [num_tiles, 3, H, W]
            pixels = {"pixel_values": out["pixel_values"][0], "image_sizes": out["image_sizes"]}
        return PreparedImage(pixels, num_tokens, image_token * num_tokens, pixel_digest(image))

    @torch.inference_mode()
    def encode(self, images: list[PreparedImage]) -> list[torch.Tensor]:
        extra = {}
        if "image_sizes" in images[0].pixels:
            extra["image_sizes"] = batched(images, "image_sizes")
        features = self.model.get_image_features(
            pixel_values=batched(images, "pixel_values").to(self.device, self.dtype),
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            **extra,
        ).pooler_output
        if isinstance(features, torch.Tensor):  # NeXT packs every image into one tensor
            features = per_image(features, images)
        rows = [f.reshape(-1, f.shape[-1]) for f in features]
        assert [len(r) for r in rows] == [im.num_tokens for im in images]
        return rows
