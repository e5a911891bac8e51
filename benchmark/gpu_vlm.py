"""Vision-language serving on a GPU with a real-size shape (random weights): LLaVA-1.5-7B.

1. Images/s through the vision tower + projector (CLIP ViT-L/14-336, 576 tokens an image) at
   batch 1 and 16, images preprocessed beforehand (the encoder's own cost only).
2. The 1000-request ShareGPT-like text workload, all submitted at once, text-only vs with 20%
   of the requests carrying one 448x448 image (576 more prompt tokens each): requests/s and
   output tokens/s of each run.

The checkpoint directory holds only config.json, the processor and the embedded tokenizer
extended with `<image>` (its vocabulary sets the text embedding's rows, 49160 instead of
32064); load_format='dummy' fills every weight at random.
Run: python benchmark/gpu_vlm.py [--num-requests 1000] [--out benchmark/results/gpu_vlm.json]
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


def write_llava_7b_shape(directory: Path) -> None:
    from lmdeploy.adapters.loaders.model_source import embedded_model_file
    from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

    tokenizer = _gguf_tokenizer(embedded_model_file())
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
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--image-share", type=float, default=0.2)
    parser.add_argument("--vision-batch", type=int, default=16)
    parser.add_argument("--out", default="benchmark/results/gpu_vlm.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_llava_7b_shape(Path(tmp))
        pipe = pipeline(
            tmp,
            backend_config=PytorchEngineConfig(load_format="dummy", session_len=4096),
            vision_config=VisionConfig(max_batch_size=args.vision_batch),
        )
        encoder = pipe.service.vision.encoder
        result = {
            "model": "LLaVA-1.5-7B shape, random weights, fp16",
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
