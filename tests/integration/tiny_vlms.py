"""Tiny random vision-language checkpoints from transformers' own config, model and processor
classes: LLaVA and LLaVA-NeXT (a 2-layer CLIP vision tower, a 2-layer Llama, 28-pixel
images), Qwen2-VL and Qwen2.5-VL (a 2-block vision tower, a 2-layer Qwen2 text model with
M-RoPE, images of at most 112x112 pixels), InternVL (a 2-layer InternViT, a 2-layer Qwen2 or
Llama text model, 28-pixel tiles); the embedded tokenizer extended with the family's
image tokens, the processor with default settings otherwise. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.vl.constants import IMAGE_TOKEN

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


QK_SCALE = 6.0
QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"  # one image in a reference prompt


def _qwen_config(kind: str, tokenizer):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    hidden = TINY_SHAPE["hidden_size"]
    head_dim = hidden // TINY_SHAPE["num_attention_heads"]
    rope = {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}
    assert 2 * sum(rope["mrope_section"]) == head_dim
    text = {
        **TINY_SHAPE,
        "vocab_size": len(tokenizer),
        "rope_parameters": rope,
        "bos_token_id": tokenizer.bos_token_id,  # not Qwen's, outside this vocabulary
        "eos_token_id": tokenizer.eos_token_id,
    }
    common = dict(
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2)
        return transformers.Qwen2VLConfig(
            vision_config=vision, architectures=["Qwen2VLForConditionalGeneration"], **common
        )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=hidden,
        fullatt_block_indexes=[1],
        window_size=56,
    )
    return transformers.Qwen2_5_VLConfig(
        vision_config=vision, architectures=["Qwen2_5_VLForConditionalGeneration"], **common
    )


class QwenProcessor:
    """What Qwen2VLProcessor does for images (it cannot be built without torchvision, for its
    video processor): each `<|image_pad|>` of the text repeated for its image's merged patches,
    and `mm_token_type_ids` marking them (transformers' M-RoPE needs it)."""

    def __init__(self, image_processor, tokenizer) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(
        self, text: str, images: list | None, return_tensors: str = "pt", encode=None, **kwargs
    ) -> dict:
        """`encode`: text -> ids (default: the tokenizer's, no special tokens); `kwargs` go to
        the image processor (e.g. `size`)."""
        out = {}
        if images:
            out = dict(self.image_processor(images=images, return_tensors=return_tensors, **kwargs))
            pieces = text.split("<|image_pad|>")
            counts = (out["image_grid_thw"].prod(-1) // 4).tolist()
            text = pieces[0] + "".join(
                "<|image_pad|>" * n + piece for n, piece in zip(counts, pieces[1:], strict=True)
            )
        encode = encode or (lambda t: self.tokenizer.encode(t, add_special_tokens=False))
        ids = torch.tensor([encode(text)])
        image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        out.update(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=(ids == image_id).int(),
        )
        return out


def save_tiny_qwen_vl(kind: str, directory: Path, hf_tokenizer, seed: int = 0):
    """A tiny Qwen2-VL (`qwen2_vl`) or Qwen2.5-VL (`qwen2_5_vl`): its transformers model and
    processor (the reference)."""
    tokenizer = hf_tokenizer.__class__.from_pretrained(_save(hf_tokenizer, directory))
    tokenizer.add_tokens(QWEN_TOKENS, special_tokens=True)
    config = _qwen_config(kind, tokenizer)
    torch.manual_seed(seed)
    cls = (
        transformers.Qwen2VLForConditionalGeneration
        if kind == "qwen2_vl"
        else transformers.Qwen2_5_VLForConditionalGeneration
    )
    model = cls(config).eval()
    _perturb(model)
    with torch.no_grad():  # sharper attention, so that positions (M-RoPE) steer the ids
        for name, param in model.named_parameters():
            if "language_model" in name and ("q_proj" in name or "k_proj" in name):
                param.mul_(QK_SCALE)
    model.save_pretrained(directory, safe_serialization=True)
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    images.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, QwenProcessor(images, tokenizer)


INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]
INTERNVL_IMAGE = "<img><IMG_CONTEXT></img>"  # one image in a reference prompt
TILE_TOKENS = 4  # (28 / 7) ** 2 patches, pixel-shuffled by 0.5
PROJECTOR_SCALE = 20.0


class InternVLProcessor:
    """What transformers' InternVLProcessor does for images (it cannot be built without
    torchvision, for its video processor): each `<IMG_CONTEXT>` repeated for its image's tiles."""

    def __init__(self, image_processor, tokenizer) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, text: str, images: list | None, return_tensors: str = "pt") -> dict:
        out = {}
        if images:
            out = dict(self.image_processor(images=images, return_tensors=return_tensors))
            pieces = text.split("<IMG_CONTEXT>")
            counts = (out.pop("num_patches") * TILE_TOKENS).tolist()
            text = pieces[0] + "".join(
                "<IMG_CONTEXT>" * n + piece for n, piece in zip(counts, pieces[1:], strict=True)
            )
        ids = torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])
        return {**out, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def save_tiny_internvl(text_model: str, directory: Path, hf_tokenizer, seed: int = 0):
    """A tiny InternVL whose language model is `text_model` ('qwen2' or 'llama'): its
    transformers model and processor (the reference)."""
    tokenizer = hf_tokenizer.__class__.from_pretrained(_save(hf_tokenizer, directory))
    tokenizer.add_tokens(INTERNVL_TOKENS, special_tokens=True)
    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_size=[PATCH, PATCH],
    )
    text = {
        **TINY_SHAPE,
        "model_type": text_model,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=TILE_TOKENS,
        tie_word_embeddings=False,  # a head of its own: tied, the tiny model repeats one token
        architectures=["InternVLForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    _perturb(model)
    with torch.no_grad():  # image rows as large as token embeddings, so images steer the ids
        model.model.multi_modal_projector.linear_2.weight.mul_(PROJECTOR_SCALE)
    model.save_pretrained(directory, safe_serialization=True)
    images = transformers.GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    images.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, InternVLProcessor(images, tokenizer)


def _perturb(model) -> None:
    """Norm weights away from one and biases away from zero, so that one applied wrongly
    shows in the ids."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(float(param.mean()), 0.1)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)


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
    return greedy_after(model, inputs, max_new_tokens)


def greedy_after(model, inputs: dict, max_new_tokens: int) -> list[int]:
    """transformers' greedy ids after the processor's `inputs`."""
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


# The checks every family's pipeline passes against transformers (test_vlm_<family>.py).
ONE = f"{IMAGE_TOKEN}\nWhat is shown here?"
TWO = f"Image-1: {IMAGE_TOKEN}\nImage-2: {IMAGE_TOKEN}\nCompare the two images."
TEXT = "Tell me a story about the sea and the ships on it."


@dataclass
class TinyVLM:
    """A tiny checkpoint's transformers model and processor beside the pipeline serving it;
    `image_text`: what stands for one image in the processor's prompt."""

    model: Any
    processor: Any
    pipe: Any
    image_text: str

    def reference(self, text: str, images: list, n: int) -> list[int]:
        """transformers' greedy ids for a pipeline prompt (IMAGE_TOKEN where images go)."""
        text = text.replace(IMAGE_TOKEN, self.image_text)
        return reference_greedy(self.model, self.processor, text, images, n)


def vlm_pipeline(directory: Path, max_prefill_token_num: int, vision_config=None):
    """The pipeline of a tiny VLM with small blocks and prefill chunks (chunks start and stop
    inside images) and the prefix cache on."""
    config = PytorchEngineConfig(
        session_len=512,
        block_size=16,
        max_prefill_token_num=max_prefill_token_num,
        enable_prefix_caching=True,
    )
    extra = {} if vision_config is None else {"vision_config": vision_config}
    return pipeline(str(directory), backend_config=config, **extra)


def greedy(n: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, ignore_eos=True)


def check_batched_with_text(vlm: TinyVLM, a: Image.Image, b: Image.Image) -> None:
    """One and two images and a text-only request in one batch: greedy ids equal transformers',
    and every KV block comes back."""
    cases = [(ONE, [a], 12), (TWO, [a, b], 10), (TEXT, [], 8), (ONE, [b], 6)]
    expected = [vlm.reference(text, images, n) for text, images, n in cases]
    prompts = [(text, images) if images else text for text, images, _ in cases]
    responses = vlm.pipe(prompts, gen_config=[greedy(n) for *_, n in cases], do_preprocess=False)
    assert [r.token_ids for r in responses] == expected
    stats = vlm.pipe.service.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks, "KV blocks leaked"


def check_prefix_cache_keeps_images_apart(vlm: TinyVLM, a: Image.Image, b: Image.Image) -> None:
    """`a` and `b` of one size in the same prompt: the second run of `a` reuses its cached
    blocks, `b` shares none of the blocks that hold `a`."""
    text = ONE + " " + TEXT
    expected_a, expected_b = vlm.reference(text, [a], 8), vlm.reference(text, [b], 8)
    assert expected_a != expected_b, "the images must steer the tiny model apart"

    def run(image) -> tuple[list[int], int]:
        response = vlm.pipe((text, image), gen_config=greedy(8), do_preprocess=False)
        return response.token_ids, vlm.pipe.service.engine.stats().num_prefix_hit_tokens

    ids, hits = run(a)
    assert ids == expected_a
    ids, hits_again = run(a)
    assert ids == expected_a and hits_again > hits, "the same image reuses its cached blocks"
    ids, hits_other = run(b)
    assert ids == expected_b
    assert hits_other == hits_again, "no block holding an image is shared with another image"
