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
from ..layers.embedding import ParallelLMHead, TiedLMHead, VocabEmbedding
from ..layers.linear import QKVParallelLinear, RowParallelLinear
from ..layers.moe import SparseMoeBlock, expert_weights_mapping
from ..layers.norm import RMSNorm
from .base import CausalLM, KVCaches
from .config import ModelConfig
from .llama import LlamaMLP


class Qwen3MoeAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        self.head_dim = head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, head_dim, heads, kv_heads, bias=cfg.attention_bias
        )
        self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.o_proj = RowParallelLinear(heads * head_dim, cfg.hidden_size, bias=False)
        self.attn = Attention(heads, kv_heads, head_dim)

    def forward(self, x, cos, sin, kv_cache, meta) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
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


class Qwen3MoeDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen3MoeAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = (
            SparseMoeBlock(
                cfg.num_experts,
                cfg.num_experts_per_tok,
                cfg.hidden_size,
                cfg.moe_intermediate_size or cfg.intermediate_size,
                renormalize=cfg.norm_topk_prob,
            )
            if _is_sparse(cfg, layer_idx)
            else LlamaMLP(cfg)
        )

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As Llama's layer: the previous layer's MLP output and the residual stream in (None
        at the first layer), this layer's MLP output and the residual stream before it out."""
        if residual is None:
            normed, residual = self.input_layernorm(h), h
        else:
            normed, residual = self.input_layernorm(h, residual)
        h = self.self_attn(normed, cos, sin, kv_cache, meta)
        normed, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(normed), residual


class Qwen3MoeModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3MoeDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        h, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta)
        return self.norm(h, residual)[0]


class Qwen3MoeForCausalLM(CausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        # The experts' names first: "experts.0.gate_proj" also holds the dense "gate_proj".
        self.packed_modules_mapping = {
            **expert_weights_mapping(cfg.num_experts, "mlp", "gate_proj", "up_proj", "down_proj"),
            "q_proj": ("qkv_proj", "q"),
            "k_proj": ("qkv_proj", "k"),
            "v_proj": ("qkv_proj", "v"),
            "gate_proj": ("gate_up_proj", 0),
            "up_proj": ("gate_up_proj", 1),
        }
        self.model = Qwen3MoeModel(cfg)
        self.lm_head = (
            TiedLMHead(self.model.embed_tokens)
            if cfg.tie_word_embeddings
            else ParallelLMHead(cfg.hidden_size, cfg.vocab_size)
        )

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        return self.model(input_ids, cos, sin, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
