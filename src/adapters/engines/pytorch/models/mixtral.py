"""Mixtral: Llama's attention with a sparse mixture of SwiGLU experts as every layer's MLP.

The router picks the top `num_experts_per_tok` experts of each token and always renormalizes
their softmax weights over the picked ones. Checkpoints name the MoE block `block_sparse_moe`
and an expert's projections w1 (gate), w3 (up), w2 (down); they load into stacked weights
(`layers/moe.py`).
"""

from __future__ import annotations

from torch import nn

from ..layers.moe import FusedMoE, SparseMoeBlock, expert_weights_mapping
from .config import ModelConfig
from .llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class MixtralDecoderLayer(LlamaDecoderLayer):
    mlp_name = "block_sparse_moe"

    def build_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        experts = FusedMoE(
            cfg.num_experts,
            cfg.num_experts_per_tok,
            cfg.hidden_size,
            cfg.intermediate_size,
            renormalize=True,
        )
        return SparseMoeBlock(experts)


class MixtralModel(LlamaModel):
    layer_cls = MixtralDecoderLayer


class MixtralForCausalLM(LlamaForCausalLM):
    model_cls = MixtralModel

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        # The experts' names first: they are more specific than Llama's fragments.
        self.packed_modules_mapping = {
            **expert_weights_mapping(cfg.num_experts, "block_sparse_moe", "w1", "w3", "w2"),
            **LlamaForCausalLM.packed_modules_mapping,
        }
