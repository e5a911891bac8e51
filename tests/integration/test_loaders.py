"""The weight loaders for real: GGUF files of every supported type, sharded HF directories,
dummy weights, and the errors of model resolution. transformers reads the same files and is
the reference throughout (float32, CPU)."""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
from lmdeploy.adapters.engines.pytorch.builder import build, read_model_config
from lmdeploy.adapters.engines.pytorch.layers.linear import LinearBase
from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
from lmdeploy.adapters.engines.pytorch.models.llama import LlamaForCausalLM
from lmdeploy.adapters.engines.pytorch.models.registry import UnsupportedArchitecture
from lmdeploy.adapters.engines.pytorch.models.weights import expected_weights, load_weights
from lmdeploy.adapters.engines.pytorch.runner.runner import PytorchModelRunner
from lmdeploy.adapters.loaders import dummy, safetensors_dir
from lmdeploy.adapters.loaders.gguf_file import GGUFCheckpoint, _unpermute, hf_name
from lmdeploy.adapters.loaders.model_source import ModelNotFound, resolve
from lmdeploy.infrastructure.devices import platform_for

from ._gguf_fixtures import TinyLlamaShape, llama_cpp_permute, write_tiny_gguf

GGUF_NAME = "tiny-llama.gguf"
TOKEN_IDS = [1, 17, 42, 99, 150, 299, 7, 256, 3]
CPU_CONFIG = dict(device_type="cpu", dtype="float32", num_gpu_blocks=4, block_size=16)

# Largest |loaded - original| over a tensor, as a fraction of its largest |value|: the type's
# worst rounding (Q4_0's clipped extreme costs a whole step of amax / 8), plus its f16 scales.
QUANT_ERROR = {
    "F32": 0.0,
    "F16": 2**-11,
    "BF16": 2**-8,
    "Q8_0": 1 / 127,
    "Q4_0": 1 / 7,
    "Q4_1": 1 / 14,
}
K_QUANTS = ["Q4_K", "Q6_K"]  # random raw blocks: no float32 original, transformers is the check
ALL_TYPES = [*QUANT_ERROR, *K_QUANTS]


# --- helpers -------------------------------------------------------------------------------


def dense_state(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Every tensor of our model in its plain layout, the builder's packed CPU linears included."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and module.packed is not None:
            state[f"{name}.weight"] = module.packed.packed_weight.to_dense()
            if module.packed.bias is not None:
                state[f"{name}.bias"] = module.packed.bias
    return state


def hf_named(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, fused projections split back apart."""
    cfg = model.config
    q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    fusions = {
        "qkv_proj": (("q_proj", "k_proj", "v_proj"), [q_size, kv_size, kv_size]),
        "gate_up_proj": (("gate_proj", "up_proj"), [cfg.intermediate_size] * 2),
    }
    named = {}
    for name, tensor in dense_state(model).items():
        fused = next((f for f in fusions if f in name), None)
        if fused is None:
            named[name] = tensor
            continue
        parts, sizes = fusions[fused]
        for part, piece in zip(parts, tensor.split(sizes), strict=True):
            named[name.replace(fused, part)] = piece
    return named


def assert_same_weights(ours: LlamaForCausalLM, theirs: torch.nn.Module) -> None:
    ours_named, theirs_named = hf_named(ours), theirs.state_dict()
    if "lm_head.weight" not in ours_named:  # tied: our LM head reads the embedding
        assert ours.config.tie_word_embeddings
        theirs_named.pop("lm_head.weight")
    assert ours_named.keys() == theirs_named.keys()
    for name, tensor in ours_named.items():
        torch.testing.assert_close(tensor, theirs_named[name], rtol=0, atol=0, msg=name)


def last_logits(runner: PytorchModelRunner, token_ids: list[int]) -> torch.Tensor:
    """Our last-position logits after one prefill of `token_ids` through the paged KV cache."""
    num_tokens, block_size = len(token_ids), runner.cache.block_size
    meta = AttentionMetadata(
        slot_mapping=torch.arange(num_tokens),
        block_tables=torch.arange(math.ceil(num_tokens / block_size))[None],
        context_lens=torch.tensor([num_tokens]),
        query_lens=[num_tokens],
        context_lens_list=[num_tokens],
        is_decode=False,
        num_cached_list=[0],
    )
    cos, sin = runner.rope.cos[:num_tokens], runner.rope.sin[:num_tokens]
    with torch.inference_mode():
        hidden = runner.model(torch.tensor(token_ids), cos, sin, runner.kv_caches, meta)
        return runner.model.compute_logits(hidden[-1:])


def reference_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([token_ids])).logits[0, -1:]


def assert_logits_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.isfinite().all()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def load_gguf(path: Path) -> LlamaForCausalLM:
    checkpoint = GGUFCheckpoint(path)
    model = LlamaForCausalLM(ModelConfig.from_hf(checkpoint.config))
    loaded = load_weights(model, checkpoint.weights())
    assert loaded == expected_weights(model), "weights missing from the GGUF file"
    return model.eval()


def load_reference(directory: Path, gguf_file: str | None = None) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=gguf_file, dtype=torch.float32
    )
    return model.eval()


def cpu_runner(model: LlamaForCausalLM) -> PytorchModelRunner:
    return PytorchModelRunner(model, 4, 16, torch.device("cpu"), torch.float32)


# --- GGUF ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFCase:
    type_name: str
    path: Path
    originals: dict[str, np.ndarray]  # float32, keyed by GGUF name, HF row order
    ours: LlamaForCausalLM
    theirs: torch.nn.Module


def _gguf_case(folder: Path, type_name: str, tied: bool = False) -> GGUFCase:
    path = folder / GGUF_NAME
    qtype = gguf.GGMLQuantizationType[type_name]
    originals = write_tiny_gguf(path, qtype, TinyLlamaShape(), with_output=not tied)
    return GGUFCase(type_name, path, originals, load_gguf(path), load_reference(folder, GGUF_NAME))


@pytest.fixture(scope="module")
def gguf_case(request, tmp_path_factory) -> GGUFCase:
    return _gguf_case(tmp_path_factory.mktemp(request.param), request.param)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
    for num_heads in (1, 2, 3, 6):
        permuted = llama_cpp_permute(w, num_heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(_unpermute(permuted, num_heads), w)


def test_hf_name_maps_llama_cpp_names():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.11.attn_k.weight") == "model.layers.11.self_attn.k_proj.weight"
    assert hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"


@pytest.mark.parametrize("gguf_case", ["Q8_0"], indirect=True)
def test_gguf_config_from_llama_cpp_metadata(gguf_case):
    cfg, shape = gguf_case.ours.config, TinyLlamaShape()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (300, 256, 512)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 4, 2)
    assert cfg.head_dim == 64
    assert cfg.rope_theta == shape.rope_theta
    assert cfg.rms_norm_eps == pytest.approx(shape.rms_norm_eps)
    assert cfg.max_position_embeddings == shape.context_length
    assert not cfg.tie_word_embeddings


@pytest.mark.parametrize("gguf_case", list(QUANT_ERROR), indirect=True)
def test_gguf_weights_match_originals_within_quantization_error(gguf_case):
    ours = hf_named(gguf_case.ours)
    for gguf_name, original in gguf_case.originals.items():
        expected = torch.from_numpy(original)
        atol = (
            QUANT_ERROR[gguf_case.type_name] * expected.abs().max().item()
            if original.ndim == 2
            else 0
        )
        torch.testing.assert_close(
            ours[hf_name(gguf_name)], expected, rtol=0, atol=atol, msg=gguf_name
        )


@pytest.mark.parametrize("gguf_case", ALL_TYPES, indirect=True)
def test_gguf_weights_equal_transformers(gguf_case):
    assert_same_weights(gguf_case.ours, gguf_case.theirs)


@pytest.mark.parametrize("gguf_case", ALL_TYPES, indirect=True)
def test_gguf_logits_match_transformers(gguf_case):
    ours = last_logits(cpu_runner(gguf_case.ours), TOKEN_IDS)
    assert_logits_close(ours, reference_logits(gguf_case.theirs, TOKEN_IDS))


def test_gguf_without_output_tensor_ties_embeddings(tmp_path):
    case = _gguf_case(tmp_path, "F16", tied=True)
    assert case.ours.config.tie_word_embeddings and not list(case.ours.lm_head.parameters())
    assert_same_weights(case.ours, case.theirs)
    ours = last_logits(cpu_runner(case.ours), TOKEN_IDS)
    assert_logits_close(ours, reference_logits(case.theirs, TOKEN_IDS))


def test_gguf_unsupported_tensor_type_is_named(tmp_path):
    path = tmp_path / GGUF_NAME
    write_tiny_gguf(path, gguf.GGMLQuantizationType.F64)
    with pytest.raises(ValueError, match="token_embd.weight has type F64"):
        next(GGUFCheckpoint(path).weights())


@pytest.mark.parametrize("gguf_case", ["Q4_K"], indirect=True)
def test_builder_loads_gguf_found_in_directory(gguf_case):
    source = resolve(str(gguf_case.path.parent))
    assert (source.kind, source.path) == ("gguf", gguf_case.path)
    built = build(
        source, PytorchEngineConfig(**CPU_CONFIG), platform_for(PytorchEngineConfig(**CPU_CONFIG))
    )
    assert_same_weights(built.runner.model, gguf_case.theirs)


# --- HF directory --------------------------------------------------------------------------


def write_hf_llama(directory: Path, num_kv_heads: int) -> torch.nn.Module:
    """A random transformers Llama saved in 200 KB shards; its norms are perturbed from one."""
    torch.manual_seed(num_kv_heads)
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=128,
        rope_theta=50000.0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.1)
    model.save_pretrained(directory, max_shard_size="200KB")
    return model


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def hf_dir(request, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp(f"hf-kv{request.param}")
    return directory, write_hf_llama(directory, request.param)


def test_hf_dir_shards_are_read_in_full(hf_dir):
    directory, reference = hf_dir
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    shards = safetensors_dir.shard_files(directory)
    assert len(shards) > 1
    assert {p.name for p in shards} == set(weight_map.values())
    weights = dict(safetensors_dir.iter_weights(directory))
    expected = reference.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_hf_dir_config(hf_dir):
    directory, reference = hf_dir
    cfg, ref = ModelConfig.from_hf(safetensors_dir.read_config(directory)), reference.config
    assert cfg.num_key_value_heads == ref.num_key_value_heads
    assert (cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (128, 32, 300)
    assert cfg.rope_theta == 50000.0 and cfg.rms_norm_eps == ref.rms_norm_eps
    assert not cfg.tie_word_embeddings


def test_hf_dir_logits_match_transformers(hf_dir):
    directory, reference = hf_dir
    model = LlamaForCausalLM(ModelConfig.from_hf(safetensors_dir.read_config(directory)))
    loaded = load_weights(model, safetensors_dir.iter_weights(directory))
    assert loaded == expected_weights(model)
    assert_same_weights(model, reference)
    ours = last_logits(cpu_runner(model.eval()), TOKEN_IDS)
    assert_logits_close(ours, reference_logits(reference, TOKEN_IDS))


def test_unknown_architecture_is_named_with_the_supported_ones(tmp_path):
    config = {"architectures": ["NoSuchModelForCausalLM"], "vocab_size": 300, "hidden_size": 64}
    config |= {"intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="NoSuchModelForCausalLM.*LlamaForCausalLM"):
        build(
            resolve(str(tmp_path)),
            PytorchEngineConfig(**CPU_CONFIG),
            platform_for(PytorchEngineConfig(**CPU_CONFIG)),
        )


def test_builder_loads_hf_dir(hf_dir):
    directory, reference = hf_dir
    built = build(
        resolve(str(directory)),
        PytorchEngineConfig(**CPU_CONFIG),
        platform_for(PytorchEngineConfig(**CPU_CONFIG)),
    )
    ours = last_logits(built.runner, TOKEN_IDS)
    assert_logits_close(ours, reference_logits(reference, TOKEN_IDS))


# --- dummy weights -------------------------------------------------------------------------


@pytest.mark.parametrize("hf_dir", [2], indirect=True, ids=["gqa"])
def test_dummy_weights_have_the_checkpoint_shapes(hf_dir):
    directory, reference = hf_dir
    config = PytorchEngineConfig(load_format="dummy", **CPU_CONFIG)
    source = resolve(str(directory), config.load_format)
    assert (source.kind, source.path) == ("dummy", directory)
    built = build(source, config, platform_for(config))
    assert built.config == ModelConfig.from_hf(safetensors_dir.read_config(directory))
    ours, theirs = hf_named(built.runner.model), reference.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    for name, tensor in ours.items():
        if "norm" in name:
            assert torch.all(tensor == 1.0), name
        else:
            assert 0.015 < tensor.std().item() < 0.025, name
            assert not torch.equal(tensor, theirs[name]), f"{name} was read from the checkpoint"
    assert last_logits(built.runner, TOKEN_IDS).isfinite().all()


def test_shipped_llama_3_8b_config_has_the_real_shape():
    cfg = ModelConfig.from_hf(dummy.shipped_config("llama-3-8b"))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (32, 4096, 14336)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 8, 128)
    assert cfg.vocab_size == 128256 and cfg.rope_theta == 500000.0
    with torch.device("meta"):  # shapes only: the real 8B weights would not fit a test machine
        model = LlamaForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248


@pytest.mark.parametrize("name", ["llama-3-8b", "meta-llama/Meta-Llama-3-8B"])
def test_shipped_dummy_model_resolves_without_files(name):
    source = resolve(name, "dummy")
    assert (source.kind, source.path) == ("dummy", None)
    config, weights = read_model_config(source)
    assert config == ModelConfig.from_hf(dummy.shipped_config(name)) and config.hidden_size == 4096
    assert weights is None


# --- resolution errors ---------------------------------------------------------------------


def test_missing_local_path_is_named():
    with pytest.raises(ModelNotFound, match="/nonexistent/x"):
        resolve("/nonexistent/x")


def test_directory_without_model_files_is_rejected(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelNotFound, match="neither config.json nor a .gguf"):
        resolve(str(tmp_path))


def test_unreachable_hub_id_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(ModelNotFound, match="nobody-xyz/does-not-exist-123"):
        resolve("nobody-xyz/does-not-exist-123", download_dir=str(tmp_path))
    assert time.monotonic() - start < 60


def test_silent_hub_times_out(tmp_path, monkeypatch):
    """A hub that accepts the connection and never answers (a black-holed network)."""
    from huggingface_hub import constants

    with socket.create_server(("127.0.0.1", 0)) as silent:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
        start = time.monotonic()
        with pytest.raises(ModelNotFound, match="nobody-xyz/does-not-exist-123.*unreachable"):
            resolve("nobody-xyz/does-not-exist-123", download_dir=str(tmp_path))
    assert time.monotonic() - start < 15


def test_dummy_weights_of_a_bare_config_dir_take_token_ids(tmp_path):
    """A benchmark's shape: config.json alone, random weights, prompts as token ids."""
    from transformers import LlamaConfig

    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
    ).save_pretrained(tmp_path)
    config = PytorchEngineConfig(load_format="dummy", session_len=64, cache_max_entry_count=0.05)
    with pipeline(str(tmp_path), backend_config=config) as pipe:
        out = pipe([[1, 5, 9]], gen_config=GenerationConfig(max_new_tokens=3, ignore_eos=True))
    assert out[0].generate_token_len == 3
