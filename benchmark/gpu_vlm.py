"""Vision-language serving on a GPU with a real-size shape (random weights): LLaVA-1.5-7B
(`--model llava-1.5-7b`, the default) or Qwen2-VL-7B (`--model qwen2-vl-7b`).

1. Images/s through the vision tower + projector at batch 1 and 16, images preprocessed
   beforehand (the encoder's own cost only). LLaVA: CLIP ViT-L/14-336, 576 tokens an image;
   Qwen2-VL: its 32-block ViT at the image's own resolution (448x448: 1024 patches merged to
   256 tokens), the images of a batch packed along the patch axis.
2. The 1000-request ShareGPT-like text workload, all submitted at once, text-only vs with 20%
   of the requests carrying one 448x448 image (576 / 256 more prompt tokens each): requests/s
   and output tokens/s of each run. Qwen2-VL's image requests run with M-RoPE positions.

The checkpoint directory holds only config.json, the processor and the embedded tokenizer
extended with the family's image tokens (its vocabulary sets the text embedding's rows);
load_format='dummy' fills every weight at random.
Run: python benchmark/gpu_vlm.py [--model qwen2-vl-7b] [--num-requests 1000] [--out FILE]
Without the GGUF on the device, save its tokenizer here first and point to it:
    python -c "from benchmark.gpu_vlm import base_tokenizer; base_tokenizer().save_pretrained('TOKDIR')"
    LMDEPLOY_VLM_TOKENIZER=TOKDIR python benchmark/gpu_vlm.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from workloads import random_prompt, sharegpt_like  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, VisionConfig, pipeline  # noqa: E402
from lmdeploy.vl.constants import IMAGE_TOKEN  # noqa: E402

TOKENIZER_ENV = "LMDEPLOY_VLM_TOKENIZER"


def base_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The embedded default model's tokenizer, from its GGUF file, or from a directory it was
    saved to (`$LMDEPLOY_VLM_TOKENIZER`: a few MB to carry to a device that lacks the GGUF)."""
    import os

    if os.environ.get(TOKENIZER_ENV):
        return transformers.AutoTokenizer.from_pretrained(os.environ[TOKENIZER_ENV])
    from lmdeploy.adapters.loaders.model_source import embedded_model_file
    from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

    return _gguf_tokenizer(embedded_model_file())


def write_llava_7b_shape(directory: Path) -> None:
    tokenizer = base_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = transformers.CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=image_token_id + 8,
        max_position_embeddings=4096,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        architectures=["LlavaForConditionalGeneration"],
        dtype="float16",
    )
    config.save_pretrained(directory)
    size, crop = {"shortest_edge": 336}, {"height": 336, "width": 336}
    processor = transformers.LlavaProcessor(
        transformers.CLIPImageProcessor(size=size, crop_size=crop),
        tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(directory)


def write_qwen2_vl_7b_shape(directory: Path) -> None:
    tokenizer = base_tokenizer()
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_tokens(special, special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    text = dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4)
    config = transformers.Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        architectures=["Qwen2VLForConditionalGeneration"],
        dtype="bfloat16",
    )
    config.save_pretrained(directory)
    transformers.Qwen2VLImageProcessor().save_pretrained(directory)
    tokenizer.save_pretrained(directory)


SHAPES = {
    "llava-1.5-7b": (write_llava_7b_shape, "LLaVA-1.5-7B shape, random weights, fp16"),
    "qwen2-vl-7b": (write_qwen2_vl_7b_shape, "Qwen2-VL-7B shape, random weights, bf16"),
}


def random_image(seed: int, size: int = 448) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def images_per_second(encoder, batch: int, repeats: int = 10) -> float:
    prepared = [encoder.preprocess(random_image(i)) for i in range(batch)]
    encoder.encode(prepared)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(prepared)
    torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def workload(pipe, num: int, image_share: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    tokenizer = pipe.service.tokenizer
    vocab = 32000
    prompts, configs, num_images = [], [], 0
    for i, (n_in, n_out) in enumerate(sharegpt_like(num, seed)):
        ids = random_prompt(n_in, vocab, rng)
        if rng.random() < image_share:
            text = IMAGE_TOKEN + "\n" + tokenizer.decode(ids)
            prompts.append((text, random_image(1000 + i)))
            num_images += 1
        else:
            prompts.append(ids)
        configs.append(GenerationConfig(max_new_tokens=n_out, ignore_eos=True))
    start = time.perf_counter()
    responses = pipe(prompts, gen_config=configs, do_preprocess=False)
    elapsed = time.perf_counter() - start
    out_tokens = sum(r.generate_token_len for r in responses)
    return {
        "num_requests": num,
        "num_images": num_images,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(num / elapsed, 2),
        "output_tokens_per_s": round(out_tokens / elapsed, 1),
        "input_tokens": sum(r.input_token_len for r in responses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llava-1.5-7b")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--image-share", type=float, default=0.2)
    parser.add_argument("--vision-batch", type=int, default=16)
    parser.add_argument(
        "--out",
        default=None,
        help="default: benchmark/results/gpu_vlm.json, gpu_vlm_qwen2_vl.json for qwen2-vl-7b",
    )
    args = parser.parse_args()
    out = args.out or (
        "benchmark/results/gpu_vlm.json"
        if args.model == "llava-1.5-7b"
        else "benchmark/results/gpu_vlm_qwen2_vl.json"
    )
    write_shape, title = SHAPES[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        write_shape(Path(tmp))
        pipe = pipeline(
            tmp,
            backend_config=PytorchEngineConfig(load_format="dummy", session_len=4096),
            vision_config=VisionConfig(max_batch_size=args.vision_batch),
        )
        encoder = pipe.service.vision.encoder
        result = {
            "model": title,
            "gpu": torch.cuda.get_device_name(),
            "vision_images_per_s": {
                "batch_1": round(images_per_second(encoder, 1), 1),
                "batch_16": round(images_per_second(encoder, 16), 1),
            },
            "text_only": workload(pipe, args.num_requests, 0.0),
            "with_images": workload(pipe, args.num_requests, args.image_share),
        }
        pipe.close()
    print(json.dumps(result, indent=2))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
