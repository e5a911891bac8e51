"""Tiny random vision-language checkpoints (LLaVA, LLaVA-NeXT) from transformers' own config,
model and processor classes: a 2-layer CLIP vision tower, a 2-layer Llama, the embedded
tokenizer extended with `<image>`, the processor with default settings but 28-pixel images.
Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from .tiny_models import TINY_SHAPE

IMAGE_SIZE, PATCH = 28, 7  # 16 patches a tile
PINPOINTS = [[28, 28], [28, 56], [56, 28]]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _configs(kind: str, image_token_id: int):
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    text = transformers.LlamaConfig(**{**TINY_SHAPE, "vocab_size": image_token_id + 8})
    common = dict(vision_config=vision, text_config=text, image_token_index=image_token_id)
    if kind == "llava":
        return transformers.LlavaConfig(**common, architectures=["LlavaForConditionalGeneration"])
    return transformers.LlavaNextConfig(
        **common,
        image_grid_pinpoints=PINPOINTS,
        architectures=["LlavaNextForConditionalGeneration"],
    )


def _processor(kind: str, tokenizer):
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    size = {"shortest_edge": IMAGE_SIZE}
    if kind == "llava":
        images = transformers.CLIPImageProcessor(size=size, crop_size=crop)
        return transformers.LlavaProcessor(
            images,
            tokenizer,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    images = transformers.LlavaNextImageProcessor(
        size=size, crop_size=crop, image_grid_pinpoints=PINPOINTS
    )
    return transformers.LlavaNextProcessor(
        images,
        tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def save_tiny_vlm(kind: str, directory: Path, hf_tokenizer, seed: int = 0):
    """The saved checkpoint's transformers model and processor (the reference)."""
    tokenizer = hf_tokenizer.__class__.from_pretrained(_save(hf_tokenizer, directory))
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = _configs(kind, image_token_id)
    torch.manual_seed(seed)
    cls = (
        transformers.LlavaForConditionalGeneration
        if kind == "llava"
        else transformers.LlavaNextForConditionalGeneration
    )
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(float(param.mean()), 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    processor = _processor(kind, tokenizer)
    processor.save_pretrained(directory)
    return model, processor


def _save(hf_tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(directory)
    return directory


def reference_greedy(model, processor, text: str, images: list, max_new_tokens: int) -> list[int]:
    """transformers' greedy ids for `text` (with `<image>` where each image goes)."""
    inputs = processor(text=text, images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()
