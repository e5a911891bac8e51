"""`PytorchEngineConfig(custom_module_map=...)`: a user's .py file (or dict) whose model classes
replace a registered architecture or add a new one, through `pipeline()`; and the errors of a
bad map, each naming the argument. The unknown-architecture error lists every architecture."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
import transformers

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.engines.pytorch.models.registry import (
    UnsupportedArchitecture,
    supported_architectures,
)
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.domain.errors import InvalidArgument, InvalidConfig
from lmdeploy.infrastructure.devices import platform_for

from .tiny_models import VOCAB_SIZE, engine_greedy, reference_greedy, save_tiny_checkpoint

PROMPT = [[5, 300, 1200, 77, 4096, 18]]
LLAMA = "lmdeploy.adapters.engines.pytorch.models.llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, hf_tokenizer):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    directory = tmp_path_factory.mktemp("tiny-llama-custom")
    model = save_tiny_checkpoint(config, directory, hf_tokenizer)
    return directory, model


def renamed_copy(directory, destination, architecture: str):
    """The checkpoint under another `architectures` name, which no registry line knows."""
    shutil.copytree(directory, destination)
    config = json.loads((destination / "config.json").read_text())
    config["architectures"] = [architecture]
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def write_map(tmp_path, source: str):
    path = tmp_path / "module_map.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_a_file_replaces_a_registered_architecture(tiny, tmp_path):
    directory, model = tiny
    module_map = write_map(
        tmp_path,
        f"""
        from {LLAMA} import LlamaForCausalLM

        class NegatedLlama(LlamaForCausalLM):
            # Greedy decoding then picks the least likely token: visible in the ids.
            def compute_logits(self, hidden):
                return -super().compute_logits(hidden)

        MODULE_MAP = {{"LlamaForCausalLM": "NegatedLlama"}}
        """,
    )
    config = PytorchEngineConfig(session_len=64, custom_module_map=str(module_map))
    pipe = pipeline(str(directory), backend_config=config)
    try:
        response = pipe(PROMPT, gen_config=GenerationConfig(max_new_tokens=1, ignore_eos=True))
    finally:
        pipe.close()
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits[0, -1]
    assert response[0].token_ids == [int(logits.argmin())]
    assert int(logits.argmin()) != int(logits.argmax())


def test_a_file_adds_an_architecture(tiny, tmp_path):
    directory, model = tiny
    renamed = renamed_copy(directory, tmp_path / "ckpt", "MyLlamaForCausalLM")
    module_map = write_map(
        tmp_path,
        f"""
        from {LLAMA} import LlamaForCausalLM

        class MyLlama(LlamaForCausalLM):
            pass

        CUSTOM_MODULE_MAP = {{"MyLlamaForCausalLM": MyLlama}}
        """,
    )
    reference = reference_greedy(model, PROMPT * 6)
    ours = engine_greedy(renamed, PROMPT * 6, custom_module_map=module_map)
    assert ours == reference


def test_a_dict_maps_architectures_to_dotted_class_names(tiny, tmp_path):
    directory, _ = tiny
    renamed = renamed_copy(directory, tmp_path / "ckpt", "MyLlamaForCausalLM")
    config = PytorchEngineConfig(
        device_type="cpu",
        num_gpu_blocks=4,
        custom_module_map={"MyLlamaForCausalLM": f"{LLAMA}.LlamaForCausalLM"},
    )
    built = build(resolve(str(renamed)), config, platform_for(config))
    assert type(built.runner.model).__name__ == "LlamaForCausalLM"


def test_unknown_architecture_through_pipeline_lists_every_supported_one(tiny, tmp_path):
    renamed = renamed_copy(tiny[0], tmp_path / "ckpt", "NoSuchModelForCausalLM")
    with pytest.raises(UnsupportedArchitecture) as error:
        pipeline(str(renamed), backend_config=PytorchEngineConfig(session_len=64))
    message = str(error.value)
    assert "NoSuchModelForCausalLM" in message and "custom_module_map" in message
    for arch in supported_architectures():
        assert arch in message
    assert {"Qwen2ForCausalLM", "Qwen3ForCausalLM"} <= set(supported_architectures())


BAD_MAPS = {
    "no map": ("X = 1\n", "must define MODULE_MAP"),
    "syntax error": ("MODULE_MAP = {\n", "failed to run: SyntaxError"),
    "import error": ("import no_such_module_anywhere\n", "failed to run: ModuleNotFoundError"),
    "missing class": ("MODULE_MAP = {'LlamaForCausalLM': 'Nope'}\n", "does not define"),
    "not a model": (
        "class Plain:\n    pass\nMODULE_MAP = {'LlamaForCausalLM': 'Plain'}\n",
        "not a model class",
    ),
    "bad dotted": ("MODULE_MAP = {'LlamaForCausalLM': 'no.such.Class'}\n", "cannot import"),
}


@pytest.mark.parametrize("content, reason", BAD_MAPS.values(), ids=BAD_MAPS.keys())
def test_bad_file_content_names_the_argument(tiny, tmp_path, content, reason):
    module_map = write_map(tmp_path, content)
    config = PytorchEngineConfig(device_type="cpu", custom_module_map=str(module_map))
    with pytest.raises(InvalidArgument, match=f"custom_module_map: .*{reason}"):
        build(resolve(str(tiny[0])), config, platform_for(config))


def test_missing_file_fails_in_pipeline_naming_the_argument(tiny, tmp_path):
    config = PytorchEngineConfig(session_len=64, custom_module_map=str(tmp_path / "nope.py"))
    with pytest.raises(InvalidArgument, match="custom_module_map: .*nope.py.* is not a Python"):
        pipeline(str(tiny[0]), backend_config=config)


def test_a_map_of_the_wrong_type_is_refused_by_the_config():
    with pytest.raises(InvalidConfig, match="custom_module_map"):
        PytorchEngineConfig(custom_module_map=42)
