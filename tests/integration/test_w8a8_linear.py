"""The smooth_quant linear method: its config, its parameters through the build's dtype cast,
packed q/k/v shards, and the CPU's numerics (what the GPU's 8-bit GEMM computes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.layers.linear import QKVParallelLinear, prepare_linears
from lmdeploy.adapters.engines.pytorch.layers.quantization import resolve_quant_config
from lmdeploy.adapters.engines.pytorch.layers.quantization.w8a8 import SmoothQuantConfig
from lmdeploy.adapters.loaders.dummy import randomize
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.kernels.per_token_quant import fake_per_token_quant, per_token_quant_ref

QUANT_DTYPES = {"int8": torch.int8, "float8_e4m3fn": torch.float8_e4m3fn}


def test_config_reads_quant_dtype_and_defaults_to_int8_as_0_6_5_writes():
    assert resolve_quant_config(
        {"quantization_config": {"quant_method": "smooth_quant"}}, None
    ) == (SmoothQuantConfig("int8"))
    declared = {"quant_method": "smooth_quant", "quant_dtype": "float8_e4m3fn"}
    assert SmoothQuantConfig.from_hf(declared).quant_dtype == "float8_e4m3fn"
    with pytest.raises(InvalidArgument, match="quantization_config.quant_dtype.*float8_e5m2"):
        SmoothQuantConfig.from_hf({"quant_dtype": "float8_e5m2"})


def _qkv(quant_dtype: str, dtype: torch.dtype = torch.float32) -> QKVParallelLinear:
    with torch.device("meta"):
        layer = QKVParallelLinear(
            40, 8, 3, 1, bias=True, quant_config=SmoothQuantConfig(quant_dtype)
        )
    return layer.to(dtype).to_empty(device="cpu")


@pytest.mark.parametrize("quant_dtype", list(QUANT_DTYPES))
def test_parameters_keep_their_dtypes_through_the_model_cast(quant_dtype):
    layer = _qkv(quant_dtype, torch.float16)
    assert layer.weight.dtype == QUANT_DTYPES[quant_dtype] and layer.weight.shape == (40, 40)
    assert layer.scale.dtype == torch.float32 and layer.scale.shape == (40, 1)
    assert layer.bias.dtype == torch.float16


@pytest.mark.parametrize("quant_dtype", list(QUANT_DTYPES))
def test_packed_shards_load_and_cpu_matches_the_8bit_gemm(quant_dtype):
    torch.manual_seed(0)
    layer = _qkv(quant_dtype)
    dense = {shard: torch.randn(rows, 40) for shard, rows in (("q", 24), ("k", 8), ("v", 8))}
    for shard, w in dense.items():
        q, scale = per_token_quant_ref(w, QUANT_DTYPES[quant_dtype])
        layer.weight_loader(layer.weight, q, shard)
        layer.weight_loader(layer.scale, scale, shard)
        layer.weight_loader(layer.bias, torch.full((w.shape[0],), 0.5), shard)
    prepare_linears(layer, torch.device("cpu"), torch.float32)
    x = torch.randn(5, 40)
    w = torch.cat(list(dense.values()))
    w_q, w_scale = per_token_quant_ref(w, QUANT_DTYPES[quant_dtype])
    expected = F.linear(fake_per_token_quant(x, QUANT_DTYPES[quant_dtype]), w_q.float() * w_scale)
    torch.testing.assert_close(layer(x), expected + 0.5)
    assert ((layer(x) - 0.5 - x @ w.t()).norm() / (x @ w.t()).norm()) < 0.08


@pytest.mark.parametrize("quant_dtype", list(QUANT_DTYPES))
def test_dummy_weights_of_8bit_linears_are_finite_and_dense_sized(quant_dtype):
    layer = _qkv(quant_dtype)
    randomize(layer)
    dense = layer.weight.float() * layer.scale
    assert torch.isfinite(dense).all() and 0.005 < dense.std() < 0.05


def _w8a8_state(model) -> dict[str, torch.Tensor]:
    """A float model's state in LMDeploy's W8A8 layout (the decoder layers' linears)."""
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, torch.nn.Linear):
            state[f"{name}.weight"], state[f"{name}.scale"] = per_token_quant_ref(module.weight)
    return state


def test_a_0_6_5_pytorch_model_bin_checkpoint_loads_as_its_safetensors_twin(tmp_path, hf_tokenizer):
    """LMDeploy 0.6.5's smooth_quant saves pytorch_model.bin and no quant_dtype."""
    import json

    import transformers
    from safetensors.torch import save_file

    from lmdeploy import PytorchEngineConfig, pipeline

    from .tiny_models import TINY_SHAPE, tiny_model

    model = tiny_model(transformers.LlamaConfig(**TINY_SHAPE, tie_word_embeddings=True))
    state = _w8a8_state(model)
    config = {**model.config.to_dict(), "quantization_config": {"quant_method": "smooth_quant"}}
    losses = []
    for fmt in ("bin", "safetensors"):
        directory = tmp_path / fmt
        directory.mkdir()
        if fmt == "bin":
            torch.save(state, directory / "pytorch_model.bin")
        else:
            save_file(state, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(config))
        hf_tokenizer.save_pretrained(str(directory))
        pipe = pipeline(str(directory), backend_config=PytorchEngineConfig(session_len=256))
        try:
            losses.append(pipe.get_ppl(list(range(100, 160)))[0])
        finally:
            pipe.close()
    assert losses[0] == losses[1] and math.isfinite(losses[0])
