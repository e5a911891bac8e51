"""A Llama layer's W8A8 linears taking their inputs quantised by the norm and activation
kernels before them (`fuse_input_quant`): the same outputs as each linear quantising its own
float input, and only where the linear's 8-bit kernel runs. Without a GPU the kernels run on
CPU tensors under Triton's interpreter, the linears prepared as on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmdeploy.adapters.engines.pytorch.layers.linear import LinearBase, fuse_input_quant
from lmdeploy.adapters.engines.pytorch.layers.norm import RMSNorm
from lmdeploy.adapters.engines.pytorch.layers.quantization.quantized_activation import (
    QuantizedActivation,
)
from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
from lmdeploy.adapters.engines.pytorch.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
)

from ._util import DEVICE

HIDDEN, INTER = 64, 96


class _Layer(nn.Module):
    """The modules of a Llama decoder layer that the fusion touches, under their own names."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, 0)
        self.post_attention_layernorm = RMSNorm(HIDDEN, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, h: torch.Tensor, residual: torch.Tensor):
        normed, residual = self.input_layernorm(h, residual)
        qkv = self.self_attn.qkv_proj(normed)
        normed, residual = self.post_attention_layernorm(h * 0.5, residual)
        return qkv, self.mlp(normed), residual


def _layer(device_kind: str) -> _Layer:
    torch.manual_seed(0)
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "rms_norm_eps": 1e-6,
        "quantization_config": {"quant_method": "smooth_quant"},
    }
    layer = _Layer(ModelConfig.from_hf(hf))
    for module in layer.modules():
        if isinstance(module, LinearBase):
            module.weight.data = torch.randint(-127, 128, module.weight.shape, dtype=torch.int8)
            module.scale.data = torch.rand(module.output_size, 1) * 1e-3 + 1e-3
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        norm.weight.data = torch.rand(HIDDEN) + 0.5
    layer.to(DEVICE)
    for module in layer.modules():
        if isinstance(module, LinearBase):
            module.method.process_weights_after_loading(module, torch.device(device_kind))
    return layer


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(5, HIDDEN, device=DEVICE), torch.randn(5, HIDDEN, device=DEVICE)


def test_fused_inputs_give_the_unfused_outputs(inputs):
    layer = _layer("cuda")  # the 8-bit kernel's mode
    # Clones: a CPU norm kernel adds into the residual in place.
    expected = layer(*(t.clone() for t in inputs))
    fused = fuse_input_quant(layer, LlamaForCausalLM.quantized_input_producers)
    assert sorted(fused) == ["input_layernorm", "mlp.act", "post_attention_layernorm"]
    assert isinstance(layer.input_layernorm(inputs[0]), QuantizedActivation)
    qkv, mlp_out, residual = layer(*(t.clone() for t in inputs))
    # A code may flip where the kernels divide by the scale in another order (one code ~ 1e-3).
    torch.testing.assert_close(qkv, expected[0], atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(mlp_out, expected[1], atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(residual, expected[2], atol=0, rtol=0)


def test_dequantized_linears_and_hooked_linears_keep_float_inputs(inputs):
    on_cpu = _layer("cpu")  # weights dequantised: plain float matmuls read plain inputs
    assert fuse_input_quant(on_cpu, LlamaForCausalLM.quantized_input_producers) == []
    hooked = _layer("cuda")
    hooked.mlp.down_proj.register_forward_hook(lambda module, args, out: out)  # as LoRA's
    fused = fuse_input_quant(hooked, LlamaForCausalLM.quantized_input_producers)
    assert sorted(fused) == ["input_layernorm", "post_attention_layernorm"]
    assert isinstance(hooked.mlp.act(torch.randn(2, 2 * INTER, device=DEVICE)), torch.Tensor)
