"""The quantized-linear seam (`layers/quantization/`): a method's own parameter layout loads
through the generic loader, packed shards included, and a model built with it computes what
the dense model does; the checkpoint's quantization is resolved or refused by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig
from lmdeploy.adapters.engines.pytorch.layers.linear import LinearBase, prepare_linears
from lmdeploy.adapters.engines.pytorch.layers.quantization import (
    LinearMethod,
    QuantConfig,
    UnquantizedLinearMethod,
    resolve_quant_config,
)
from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
from lmdeploy.adapters.engines.pytorch.models.llama import LlamaForCausalLM
from lmdeploy.adapters.engines.pytorch.models.weights import expected_weights, load_weights
from lmdeploy.domain.errors import InvalidArgument

from .tiny_models import TINY_SHAPE, tiny_model


class TransposedMethod(LinearMethod):
    """A stand-in method: W stored [in, out] (outputs on dim 1) as `wt`, dense after load."""

    def create_weights(self, layer: LinearBase, bias: bool) -> None:
        layer.wt = nn.Parameter(torch.empty(layer.input_size, layer.output_size))
        layer.output_dims["wt"] = (1, 1)
        layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: LinearBase, device: torch.device) -> None:
        layer.processed = True

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.wt.t())


@dataclass(frozen=True)
class TransposedConfig(QuantConfig):
    method = "transposed"

    def linear_method(self) -> LinearMethod:
        return TransposedMethod()


@pytest.fixture(scope="module")
def hf_llama() -> transformers.PreTrainedModel:
    return tiny_model(transformers.LlamaConfig(**TINY_SHAPE, tie_word_embeddings=False))


def _ours(hf_model, quant_config: QuantConfig | None, rename) -> LlamaForCausalLM:
    cfg = ModelConfig.from_hf(hf_model.config.to_dict())
    if quant_config is not None:
        cfg = ModelConfig(**{**cfg.__dict__, "quant_config": quant_config})
    model = LlamaForCausalLM(cfg)
    tensors = dict(rename(name, t) for name, t in hf_model.state_dict().items())
    assert load_weights(model, tensors.items()) == expected_weights(model)
    prepare_linears(model, torch.device("cpu"), torch.float32)
    return model


def test_a_method_with_its_own_layout_loads_packed_shards_and_computes_the_dense_linears(
    hf_llama,
):
    def transposed(name: str, tensor: torch.Tensor):
        if "_proj.weight" in name:
            return name.replace(".weight", ".wt"), tensor.t().contiguous()
        return name, tensor

    dense = _ours(hf_llama, None, lambda n, t: (n, t))
    quant = _ours(hf_llama, TransposedConfig(), transposed)
    attn = quant.model.layers[0].self_attn
    assert isinstance(attn.qkv_proj.method, TransposedMethod) and attn.qkv_proj.processed
    x = torch.randn(5, TINY_SHAPE["hidden_size"])
    torch.testing.assert_close(quant.compute_logits(x), dense.compute_logits(x))  # dense head
    for ours, ref in [(attn.qkv_proj, dense.model.layers[0].self_attn.qkv_proj)]:
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    mlp, ref_mlp = quant.model.layers[1].mlp, dense.model.layers[1].mlp
    torch.testing.assert_close(mlp(x), ref_mlp(x), rtol=1e-5, atol=1e-5)


def test_a_packed_tensor_stored_whole_is_cut_along_the_methods_output_dim():
    from lmdeploy.adapters.engines.pytorch.layers.linear import QKVParallelLinear

    layer = QKVParallelLinear(16, 4, 4, 2, quant_config=TransposedConfig())
    whole = torch.randn(16, 16 + 8 + 8)
    layer.weight_loader(layer.wt, whole)
    torch.testing.assert_close(layer.wt.data, whole)
    layer.weight_loader(layer.wt, whole[:, 16:24].clone(), "k")
    torch.testing.assert_close(layer.wt.data[:, 16:24], whole[:, 16:24])


def test_dense_checkpoints_resolve_to_no_quantization():
    assert resolve_quant_config({}, None) is None
    assert resolve_quant_config({}, "hf") is None


@pytest.mark.parametrize(
    "hf_config, model_format, field",
    [
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, None, "quant_method"),
        ({}, "nf4", "model_format"),
    ],
)
def test_an_unknown_quantization_is_refused_by_name(hf_config, model_format, field):
    with pytest.raises(InvalidArgument, match=field):
        resolve_quant_config(hf_config, model_format)


def test_model_format_is_checked_and_passed_from_turbomind_to_pytorch():
    with pytest.raises(InvalidArgument, match="model_format"):
        PytorchEngineConfig(model_format="int3")
    with pytest.raises(InvalidArgument, match="model_format"):
        TurbomindEngineConfig(model_format="meta_llama").to_pytorch()
    assert TurbomindEngineConfig(model_format="awq").to_pytorch().model_format == "awq"


@pytest.mark.parametrize("fmt", ["awq", "gptq"])
def test_dummy_weights_come_in_the_quantized_format_and_dequantise_to_small_weights(fmt):
    from lmdeploy.adapters.loaders import dummy

    hf = transformers.LlamaConfig(**TINY_SHAPE).to_dict()
    cfg = ModelConfig.from_hf(hf, model_format=fmt)
    assert cfg.quant_config is not None and cfg.quant_config.method == fmt
    model = LlamaForCausalLM(cfg)
    dummy.randomize(model)
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.qweight.dtype == torch.int32 and qkv.qweight.unique().numel() > 100
    prepare_linears(model, torch.device("cpu"), torch.float32)
    assert isinstance(qkv.method, UnquantizedLinearMethod)  # a CPU runs the dequantised weight
    x = torch.randn(3, TINY_SHAPE["hidden_size"])
    y = model.model.layers[0].mlp(x)
    assert torch.isfinite(y).all() and 0 < y.std() < 1


def test_the_model_format_flag_reaches_the_engine_config():
    import argparse

    from lmdeploy.adapters.cli.options import add_engine_options, engine_config_from

    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    args = parser.parse_args(["--model-format", "gptq"])
    assert engine_config_from(args).model_format == "gptq"
