"""What the vision encoders of transformers-format checkpoints share: loading the checkpoint's
processor and vision parts from its directory, and running a batch of images as one call of
the vision model whose rows are then handed back image by image.

A family (llava.py, internvl.py, qwen2_vl.py) says how its vision model is built and filled
and writes its own `preprocess` / `encode`: what its processor gives and how its model is
called are the family's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ...application.ports import PreparedImage

_E = TypeVar("_E", bound="CheckpointVisionEncoder")


class CheckpointVisionEncoder:
    """Base of a family's encoder. `family`: how the errors name the model ("a LLaVA model");
    `processor_class`: transformers' auto class that loads the checkpoint's processor."""

    family: ClassVar[str]
    processor_class: ClassVar[str] = "AutoImageProcessor"
    image_separator: ClassVar[str] = "\n"

    def __init__(self, processor: Any, model: nn.Module, config: Any) -> None:
        self.processor = processor
        self.model = model
        self.config = config
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @staticmethod
    def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The family's vision model (no language model: the engine has it), random weights."""
        raise NotImplementedError

    @staticmethod
    def load_weights(model: nn.Module, weights: Any) -> None:
        """Copy the checkpoint's vision tensors (`weights()`: its named tensors) into `model`."""
        raise NotImplementedError

    @classmethod
    def load(
        cls: type[_E],
        directory: Path | None,
        hf_config: dict[str, Any],
        weights: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> _E:
        import transformers

        if directory is None:
            raise ValueError(f"{cls.family} needs its checkpoint directory (for its processor)")
        config = transformers.AutoConfig.from_pretrained(directory)
        model = cls.build_model(config, device, dtype)
        if weights is not None:
            with torch.no_grad():
                cls.load_weights(model, weights)
        processor = getattr(transformers, cls.processor_class).from_pretrained(directory)
        return cls(processor, model, config)

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id


def batched(images: list[PreparedImage], key: str | None = None) -> torch.Tensor:
    """The pixels of a batch's images (`key`: that entry of each image's pixels) concatenated
    along the first axis: one call of the vision model for the whole batch."""
    return torch.cat([im.pixels if key is None else im.pixels[key] for im in images])


def per_image(rows: torch.Tensor, images: list[PreparedImage]) -> list[torch.Tensor]:
    """A batch's feature rows, in image order, cut into each image's `num_tokens` rows."""
    return list(torch.split(rows, [im.num_tokens for im in images]))
