"""Shared fixtures: the embedded model, its transformers twin, and prompts of many lengths."""

from __future__ import annotations

import os

import pytest

LONG_TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels; then came stored programs, assemblers, compilers and operating systems. "
    "Each layer let people think about bigger problems while trusting the layer below. "
) * 20


@pytest.fixture(scope="session")
def gguf_path():
    from lmdeploy.adapters.loaders.model_source import embedded_model_file

    return embedded_model_file()


@pytest.fixture(scope="session")
def hf_tokenizer(request):
    """The embedded model's tokenizer; LMDEPLOY_TEST_TOKENIZER names a saved copy of it where
    the 98 MB GGUF cannot travel (the GPU machine: benchmark/gpu_suite.sh)."""
    saved = os.environ.get("LMDEPLOY_TEST_TOKENIZER")
    if saved:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

    return _gguf_tokenizer(request.getfixturevalue("gguf_path"))


@pytest.fixture(scope="session")
def hf_model(gguf_path):
    """transformers' own Llama on the same GGUF weights, float32 on the CPU: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def prompt_ids(hf_tokenizer):
    """Eight prompts of 1 to 500 tokens, as token ids."""
    ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    assert len(ids) >= 500
    lengths = [1, 7, 31, 64, 65, 129, 257, 500]
    return [ids[i : i + n] for i, n in zip(range(0, 80, 10), lengths, strict=True)]


@pytest.fixture(scope="session")
def default_pipe():
    from lmdeploy import PytorchEngineConfig, pipeline

    pipe = pipeline("SmolLM2-135M-Instruct", backend_config=PytorchEngineConfig(session_len=2048))
    yield pipe
    pipe.close()
