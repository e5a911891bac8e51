"""The Qwen2 family on tiny random checkpoints, untied and tied LM head (Qwen2.5's small
models tie it): greedy ids equal transformers'. The q/k/v biases are random, so a bias
dropped or misplaced shows in the ids. GGUF files of llama.cpp's 'qwen2' architecture load
to the weights and logits transformers reads from the same file."""

from __future__ import annotations

import gguf
import pytest
import transformers

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.engines.pytorch.models.qwen2 import Qwen2ForCausalLM
from lmdeploy.adapters.loaders.model_source import resolve
from tests.conftest import LONG_TEXT

from ._gguf_fixtures import write_tiny_gguf
from .test_loaders import (
    CPU_CONFIG,
    TOKEN_IDS,
    assert_logits_close,
    assert_same_weights,
    last_logits,
    load_reference,
    reference_logits,
)
from .tiny_models import (
    ENGINE_CONFIGS,
    VOCAB_SIZE,
    assert_greedy_ids_match,
    prompts,
    reference_greedy,
    save_tiny_checkpoint,
)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_qwen2(request, tmp_path_factory, hf_tokenizer):
    config = transformers.Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=request.param,
        use_sliding_window=False,
    )
    directory = tmp_path_factory.mktemp(f"tiny-qwen2-{request.param}")
    model = save_tiny_checkpoint(config, directory, hf_tokenizer)
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, prompt_ids, reference_greedy(model, prompt_ids)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers(tiny_qwen2, options):
    directory, prompt_ids, reference = tiny_qwen2
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)


@pytest.mark.parametrize("type_name", ["F32", "Q8_0"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gguf_logits_match_transformers(tmp_path, type_name, tied):
    path = tmp_path / "tiny-qwen2.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType[type_name], with_output=not tied, arch="qwen2")
    built = build(resolve(str(tmp_path)), PytorchEngineConfig(**CPU_CONFIG))
    assert isinstance(built.runner.model, Qwen2ForCausalLM)
    assert built.config.tie_word_embeddings is tied
    reference = load_reference(tmp_path, path.name)
    assert_same_weights(built.runner.model, reference)
    ours = last_logits(built.runner, TOKEN_IDS)
    assert_logits_close(ours, reference_logits(reference, TOKEN_IDS))
