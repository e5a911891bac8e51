"""Qwen3-MoE: Llama's layout with an RMSNorm over each query and key head before the rotary
(Qwen3's q/k norm), and sparse mixtures of SwiGLU experts as the MLPs.

Layer i is sparse when it is not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`,
dense (Llama's MLP, `intermediate_size`) otherwise. Experts are `moe_intermediate_size` wide;
the router renormalizes the top-k weights only with `norm_topk_prob`. No shared expert.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import Attention
from ..layers.moe import FusedMoE, SparseMoeBlock, expert_weights_mapping
from ..layers.norm import RMSNorm
from .config import ModelConfig
from .llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel
from .projections import out_projection, qkv_projection


class Qwen3MoeAttention(nn.Module):
    """Qwen3's attention without a sliding window and with no bias on the output projection;
    `layer` is taken for `LlamaDecoderLayer.attention_cls`, every layer being alike."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.head_dim = head_dim
        self.qkv_proj = qkv_projection(cfg, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.o_proj = out_projection(cfg, bias=False)
        self.attn = Attention(heads, kv_heads, head_dim)

    def forward(self, x, cos, sin, kv_cache, meta) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.local_sizes, dim=-1)
        q = self.q_norm(q.reshape(-1, self.head_dim)).view(q.shape)
        k = self.k_norm(k.reshape(-1, self.head_dim)).view(k.shape)
        qkv = torch.cat([q, k, v], dim=-1)
        return self.o_proj(self.attn(qkv, cos, sin, kv_cache, meta))


def _is_sparse(cfg: ModelConfig, layer_idx: int) -> bool:
    return (
        cfg.num_experts > 0
        and layer_idx not in cfg.mlp_only_layers
        and (layer_idx + 1) % cfg.decoder_sparse_step == 0
    )


class Qwen3MoeDecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3MoeAttention

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
