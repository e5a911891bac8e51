"""The CPU's fused one-row decode step end to end: the engine gives the same greedy ids and,
within float32 summation order, the same logits with it on and off
(`LMDEPLOY_CPU_FUSED_DECODE`), on the embedded model (GGUF blocks) and a tiny random Llama
(float32 panels); a batch of two keeps the layer-by-layer path."""

from __future__ import annotations

import pytest
import torch
import transformers

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.backends.cpu import fused_decode

from .tiny_models import TINY_SHAPE, save_tiny_checkpoint

pytestmark = pytest.mark.skipif(not fused_decode.available(), reason="needs a C compiler, AVX2")

PROMPT = "Write a short story about a lighthouse keeper"
GREEDY = GenerationConfig(
    max_new_tokens=40, do_sample=False, ignore_eos=True, output_logits="generation"
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, hf_tokenizer) -> str:
    directory = tmp_path_factory.mktemp("fused-llama")
    save_tiny_checkpoint(
        transformers.LlamaConfig(**TINY_SHAPE, tie_word_embeddings=False), directory, hf_tokenizer
    )
    return str(directory)


def _run(path: str | None, fused: str, prompts: list[str]):
    """Outputs of `prompts` and the fused step's count of steps it ran (None: not built)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMDEPLOY_CPU_FUSED_DECODE", fused)
        config = PytorchEngineConfig(device_type="cpu", block_size=16, session_len=512)
        pipe = pipeline(path, backend_config=config)
    try:
        outs = pipe(prompts, gen_config=GREEDY)
        step = pipe.service.engine.runner.cpu_step
        return outs, None if step is None else step.steps
    finally:
        pipe.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", ["default", "tiny_llama"])
def test_fused_step_gives_the_layer_by_layer_ids_and_logits(model, request):
    path = None if model == "default" else request.getfixturevalue("tiny_llama")
    (fused,), fused_steps = _run(path, "1", [PROMPT])
    (plain,), plain_steps = _run(path, "0", [PROMPT])
    assert fused_steps == 39 and plain_steps is None  # every decode step after the prefill
    assert len(fused.token_ids) == 40 and fused.token_ids == plain.token_ids
    scale = plain.logits.abs().max().item()
    torch.testing.assert_close(fused.logits, plain.logits, rtol=0, atol=1e-4 * scale)


@pytest.mark.timeout(300)
def test_two_sequences_keep_the_layer_by_layer_path(tiny_llama):
    outs, steps = _run(tiny_llama, "1", [PROMPT, "One, two, three,"])
    assert steps == 0 and all(len(out.token_ids) == 40 for out in outs)
