"""Qwen3-MoE: Qwen3's attention (an RMSNorm over each query and key head before the rotary)
and sparse mixtures of SwiGLU experts as the MLPs.

Layer i is sparse when it is not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`,
dense (Llama's MLP, `intermediate_size`) otherwise. Experts are `moe_intermediate_size` wide;
the router renormalizes the top-k weights only with `norm_topk_prob`. No shared expert.
"""

from __future__ import annotations

from torch import nn

from ..layers.moe import FusedMoE, SparseMoeBlock, expert_weights_mapping
from .config import ModelConfig
from .llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel
from .qwen3 import Qwen3Attention


def _is_sparse(cfg: ModelConfig, layer_idx: int) -> bool:
    return (
        cfg.num_experts > 0
        and layer_idx not in cfg.mlp_only_layers
        and (layer_idx + 1) % cfg.decoder_sparse_step == 0
    )


class Qwen3MoeDecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention

    def build_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        if not _is_sparse(cfg, layer):
            return LlamaMLP(cfg)
        experts = FusedMoE(
            cfg.num_experts,
            cfg.num_experts_per_tok,
            cfg.hidden_size,
            cfg.moe_intermediate_size or cfg.intermediate_size,
            renormalize=cfg.norm_topk_prob,
        )
        return SparseMoeBlock(experts)


class Qwen3MoeModel(LlamaModel):
    layer_cls = Qwen3MoeDecoderLayer


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3MoeModel

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        # The experts' names first: "experts.0.gate_proj" also holds the dense "gate_proj".
        self.packed_modules_mapping = {
            **expert_weights_mapping(cfg.num_experts, "mlp", "gate_proj", "up_proj", "down_proj"),
            **LlamaForCausalLM.packed_modules_mapping,
        }
